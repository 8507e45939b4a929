"""Verify's gate: concurrent callers share one proof; a recent proof is reused unless a new one is asked for."""

from __future__ import annotations

import asyncio

import pytest

from svirtd.isolation import Proof
from svirtd.manager import VerifyResult
from svirtd.verify_gate import VerifyGate


class Prover:
    """Proofs that finish when the test says so; remembers the last one as Manager.last_verify does."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.runs = 0
        self.release = asyncio.Event()
        self.fail: Exception | None = None
        self.last: VerifyResult | None = None

    async def prove(self) -> VerifyResult:
        self.runs += 1
        await self.release.wait()
        if self.fail is not None:
            raise self.fail
        self.last = VerifyResult(policy="policy.33", at=self.clock[0],
                                 proof=Proof(subjects=self.runs, objects=0, ordered_pairs=0, checks=0, violations=()))
        return self.last


def setup(now: float = 0.0) -> tuple[list[float], Prover, VerifyGate]:
    """A settable wall clock, a prover on it, and the gate in front of the prover."""
    clock = [now]
    prover = Prover(clock)
    return clock, prover, VerifyGate(prover.prove, lambda: prover.last, recent=5.0, clock=lambda: clock[0])


def test_callers_during_a_proof_share_it_and_a_recent_one_is_reused() -> None:
    async def scenario() -> None:
        clock, prover, gate = setup(1000.0)
        callers = [asyncio.create_task(gate.result(new=i == 0)) for i in range(5)]
        await asyncio.sleep(0)
        prover.release.set()
        results = await asyncio.gather(*callers)
        assert prover.runs == 1 and all(r is results[0] for r in results)
        clock[0] += 4.9
        assert await gate.result() is results[0] and prover.runs == 1  # recent: reused
        assert (await gate.result(new=True)).proof.subjects == 2  # root: a new one
        clock[0] += 5.0
        assert (await gate.result()).proof.subjects == 3  # 5 s old: not recent any more
        clock[0] -= 60.0  # the wall clock stepped back: age unknown, not "recent"
        assert (await gate.result()).proof.subjects == 4

    asyncio.run(scenario())


def test_a_failed_proof_reaches_every_caller_and_the_next_call_tries_again() -> None:
    async def scenario() -> None:
        _clock, prover, gate = setup()
        prover.fail = OSError("no policy")
        callers = [asyncio.create_task(gate.result()) for _ in range(3)]
        await asyncio.sleep(0)
        prover.release.set()
        outcomes = await asyncio.gather(*callers, return_exceptions=True)
        assert prover.runs == 1 and all(isinstance(o, OSError) for o in outcomes)
        prover.fail = None
        assert (await gate.result()).proof.subjects == 2

    asyncio.run(scenario())


def test_a_caller_that_goes_away_does_not_cancel_the_proof_of_the_others() -> None:
    async def scenario() -> None:
        _clock, prover, gate = setup()
        leaving, staying = asyncio.create_task(gate.result()), asyncio.create_task(gate.result())
        await asyncio.sleep(0)
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        prover.release.set()
        assert (await staying).proof.subjects == 1 and prover.runs == 1

    asyncio.run(scenario())
