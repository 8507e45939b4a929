"""Resource locks: disjoint transactions overlap, shared keys serialize, sorted order never deadlocks."""

from __future__ import annotations

import asyncio
import random

from svirtd.path_locks import KeyLocks, inode_key, path_key


def test_disjoint_holders_run_together_and_shared_keys_wait() -> None:
    async def scenario() -> None:
        locks = KeyLocks()
        inside = asyncio.Event()
        async with locks.hold([path_key("/a"), inode_key(1, 2)]):
            async with asyncio.timeout(1):  # another guest's files: no waiting
                async with locks.hold([path_key("/b"), inode_key(1, 3)]):
                    pass

            async def same_inode() -> None:
                async with locks.hold([path_key("/other/name"), inode_key(1, 2)]):
                    inside.set()

            waiter = asyncio.create_task(same_inode())
            await asyncio.sleep(0.05)
            assert not inside.is_set()  # the same inode by another name waits
        await asyncio.wait_for(waiter, 1)
        assert inside.is_set()
        assert len(locks) == 0  # nothing left behind

    asyncio.run(scenario())


def test_many_overlapping_holders_in_any_order_never_deadlock() -> None:
    async def scenario() -> None:
        locks = KeyLocks()
        keys = [path_key(f"/k{i}") for i in range(6)]
        active: set[str] = set()
        rng = random.Random(7)

        async def worker() -> None:
            for _ in range(50):
                mine = rng.sample(keys, rng.randint(1, 4))
                rng.shuffle(mine)  # callers pass keys in any order
                async with locks.hold(mine):
                    assert not active & set(mine)  # mutual exclusion per key
                    active.update(mine)
                    await asyncio.sleep(0)
                    active.difference_update(mine)

        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(12))), 10)
        assert len(locks) == 0

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_no_lock_behind() -> None:
    async def scenario() -> None:
        locks = KeyLocks()
        async with locks.hold([path_key("/a"), path_key("/b")]):
            waiter = asyncio.create_task(locks.hold([path_key("/b"), path_key("/c")]).__aenter__())
            await asyncio.sleep(0.01)
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
            assert not locks.held(path_key("/c"))
        assert len(locks) == 0

    asyncio.run(scenario())
