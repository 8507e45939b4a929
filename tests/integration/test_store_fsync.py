"""Which commits of the state database wait for the disk (strace counts the fsync calls SQLite makes):
a guest's start or stop alone does not -- svirtd reads every guest's state from libvirt again at each
start -- and everything else still does."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    sys.path.insert(0, {root!r})
    from svirtd.models import Level
    from svirtd.store import Store
    from tests.unit.test_store import assignment
    store = Store(Path({db!r}))
    store.insert_assignment(assignment("u1", Level(low=1, high=2)))
    os.write(2, b"MARK state-only\\n")
    store.update_assignment("u1", False, state="running")
    os.write(2, b"MARK durable\\n")
    store.update_assignment("u1", name="renamed")
    os.write(2, b"MARK end\\n")
    assert store._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again
""")


def test_a_state_only_update_commits_without_an_fsync_and_every_other_with_one(tmp_path: Path) -> None:
    if shutil.which("strace") is None:
        pytest.fail("strace is needed (scripts/install-deps.sh installs it)")
    root = Path(__file__).resolve().parents[2]
    script = tmp_path / "writes.py"
    script.write_text(SCRIPT.format(root=str(root), db=str(tmp_path / "state.db")))
    trace = tmp_path / "trace"
    subprocess.run(["strace", "-f", "-o", str(trace), "-e", "trace=fsync,fdatasync,write", sys.executable,
                    str(script)], check=True, capture_output=True)
    phases: dict[str, int] = {}
    phase = "start"
    for line in trace.read_text().splitlines():
        if "MARK " in line:
            phase = line.split("MARK ", 1)[1].split("\\", 1)[0]
        elif "fsync(" in line or "fdatasync(" in line:
            phases[phase] = phases.get(phase, 0) + 1
    assert phases.get("start", 0) >= 1  # the insert: durable
    assert phases.get("state-only", 0) == 0, phases
    assert phases.get("durable", 0) >= 1, phases
