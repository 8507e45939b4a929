"""svirtd's own domain (svirtd_t) may not execute ldconfig: ctypes.util.find_library runs it (the e2e's
no_svirtd_denials line failed with 3 denials of ldconfig_exec_t from the heap trim). Libraries svirtd
calls through ctypes are named by their soname or taken from the process itself."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from svirtd import policy_judge

SPAWNS = ("subprocess.Popen", "os.posix_spawn", "os.exec", "os.fork", "os.system")
_seen: list[str] = []
_recording = [False]


def _hook(event: str, _args: tuple[object, ...]) -> None:
    if _recording[0] and event in SPAWNS:
        _seen.append(event)


sys.addaudithook(_hook)  # cannot be removed again: it records only while a test asks it to


def spawns(fn: Callable[[], object]) -> list[str]:
    _seen.clear()
    _recording[0] = True
    try:
        fn()
    finally:
        _recording[0] = False
    return list(_seen)


def test_the_heap_trim_runs_no_program() -> None:
    assert spawns(policy_judge._trim_heap) == []


def test_the_sepol_context_check_runs_no_program(tmp_path: Path) -> None:
    missing = tmp_path / "policy.33"
    with pytest.raises(OSError):
        assert spawns(lambda: policy_judge._sepol_check_context(missing, "system_u:object_r:etc_t:s0")) == []
    assert _seen == []
