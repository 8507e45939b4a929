"""Awaiting work that runs in a thread, never leaving it behind on cancellation."""

from __future__ import annotations

import asyncio
from typing import TypeVar

T = TypeVar("T")


async def to_the_end(work: asyncio.Future[T]) -> T:
    """await work (a thread's); cancelled meanwhile, wait until the thread is done before the cancellation
    goes on: the caller never moves on (closes descriptors, releases locks, writes the same file again)
    while its thread may still be writing."""
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        await asyncio.wait({work})
        raise
