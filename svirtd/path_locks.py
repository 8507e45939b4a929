"""Locks on the resources a relabel transaction touches, taken in sorted order.

Two transactions wait for each other only when they share a key (a path, or an inode however it is
reached), so a guest with a million-file tree does not hold up another guest's start. Every holder
takes its keys in the same global (sorted) order, so no two can deadlock. Locks exist only while
someone holds or waits for them: the table stays as small as the work in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager


def path_key(path: str) -> str:
    return f"path:{path}"


def inode_key(dev: int, ino: int) -> str:
    return f"inode:{dev}:{ino}"


class KeyLocks:
    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}  # holders plus waiters of each key

    def __len__(self) -> int:
        return len(self._locks)

    def held(self, key: str) -> bool:
        lock = self._locks.get(key)
        return lock is not None and lock.locked()

    @asynccontextmanager
    async def hold(self, keys: Iterable[str]) -> AsyncIterator[None]:
        ordered = sorted(set(keys))
        for key in ordered:
            self._users[key] = self._users.get(key, 0) + 1
            self._locks.setdefault(key, asyncio.Lock())
        acquired: list[str] = []
        try:
            for key in ordered:
                await self._locks[key].acquire()
                acquired.append(key)
            yield
        finally:
            for key in reversed(acquired):
                self._locks[key].release()
            for key in ordered:
                self._users[key] -= 1
                if not self._users[key]:
                    del self._users[key], self._locks[key]
