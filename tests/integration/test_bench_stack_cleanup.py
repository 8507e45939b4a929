"""A bench stopped with SIGTERM (timeout(1) does that) leaves nothing behind: its private libvirtd, bus
and svirtd stopped, its temp dir removed -- as when it ends on its own."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

BENCH = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from testbed.stack import private_stack
    with private_stack("svt-term") as stack:
        print(stack.libvirtd.workdir.parent, stack.libvirtd.libvirtd_pid(), stack.bus.proc.pid,
              stack.daemon.proc.pid, flush=True)
        time.sleep(600)
""")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"


def test_a_bench_stopped_with_sigterm_stops_its_stack_and_removes_its_temp_dir(as_root: None,
                                                                                tmp_path: Path) -> None:
    script = tmp_path / "bench.py"
    script.write_text(BENCH.format(root=str(Path(__file__).resolve().parents[2])))
    bench = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    work = ""
    try:
        assert bench.stdout is not None
        work, *pids = bench.stdout.readline().split()
        assert pids and all(alive(int(p)) for p in pids)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while any(alive(int(p)) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [p for p in pids if alive(int(p))] == []
        assert not Path(work).exists()
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
        if work:
            leftovers(work)


def leftovers(work: str) -> None:
    """What a failed run left (every process naming the stack's dir, then the dir): never the next test's."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            named = work.encode() in (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if named and int(proc.name) != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(proc.name), signal.SIGKILL)
    shutil.rmtree(work, ignore_errors=True)
