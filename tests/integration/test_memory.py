"""Issue 19: what an idle svirtd keeps in memory. The compiled policy (~11 MB as audit2why's policydb) is let
go when no question came for a while and read again by the next one, with the same answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from svirtd.policy_judge import PolicyJudge, Verdict, host_policy_file

pytestmark = pytest.mark.integration
GUEST = "system_u:system_r:svirt_t:s0:c1,c2"
OTHER = "system_u:object_r:svirt_image_t:s0:c3,c4"


def anon_mb() -> float:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss_Anon:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no Pss_Anon in smaps_rollup")


def test_policy_is_let_go_when_idle_and_read_again_on_the_next_question(as_root: None) -> None:
    policy = host_policy_file()
    assert policy is not None, "the host has no compiled policy (the suite's set-up installs one)"
    judge = PolicyJudge(policy)
    before = judge.decide(GUEST, OTHER, "file", ["read"])
    assert before.verdict is not Verdict.ALLOW  # another guest's image: MCS says no
    assert judge.loaded
    assert not judge.release_if_idle(3600)  # asked a moment ago: kept
    held = anon_mb()
    assert judge.release_if_idle(0)
    assert not judge.loaded
    freed = held - anon_mb()
    print(f"letting the policy go freed {freed:.1f} MB")
    assert freed > 5, f"only {freed:.1f} MB given back"
    assert not judge.release_if_idle(0)  # nothing left to let go
    assert judge.decide(GUEST, OTHER, "file", ["read"]) == before  # read again, same answer
    assert judge.loaded
