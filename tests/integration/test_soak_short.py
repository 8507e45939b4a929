"""Issue 19: the short soak (make soak's 2-minute version, fixed seed): a random workload against the real
parts (private libvirtd with real qemu guests, private bus, svirtd as a process) while svirtd is SIGKILLed
every round and libvirtd now and then; after every restart the invariants hold (soak/invariants.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from soak.run import Settings, Soak
from soak.workload import Knobs
from tests.conftest import RUN_PREFIX

pytestmark = pytest.mark.integration


def test_short_soak_keeps_every_invariant(as_root: None, tmp_path: Path) -> None:
    settings = Settings(svirtd_kills=25, libvirtd_kills=3, seed=20261130, settle=20,
                        knobs=Knobs(max_guests=12, max_running=2, trees=2, tree_files=1000))
    soak = Soak(settings, tmp_path, f"{RUN_PREFIX}-soak")
    result = soak.run()
    print(json.dumps(result))
    assert not soak.findings, soak.findings
    assert {k: result[k] for k in ("duplicate_pairs", "lost_originals", "unconfined_without_reason", "orphans",
                                   "mislabeled")} == dict.fromkeys(("duplicate_pairs", "lost_originals",
                                                                    "unconfined_without_reason", "orphans",
                                                                    "mislabeled"), 0)
    assert result["svirtd_kills"] == 25 and result["libvirtd_kills"] == 3
    ops = result["ops"]
    assert isinstance(ops, dict)
    # The workload really exercised the parts (not only calls meeting a dead svirtd).
    for op in ("define", "undefine", "start", "stop", "isolate", "release"):
        assert ops.get(f"{op}:ok", 0) > 0, f"no {op} succeeded: {ops}"
