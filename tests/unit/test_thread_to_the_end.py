"""A cancelled relabel waits for its worker thread before anything is closed (real threads)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from svirtd.converge import _to_thread_to_the_end


def test_cancellation_waits_for_the_thread() -> None:
    order: list[str] = []
    inside = threading.Event()

    def labels_for_a_while() -> str:
        inside.set()
        time.sleep(0.3)
        order.append("thread done")
        return "done"

    async def transaction() -> None:
        try:
            await _to_thread_to_the_end(labels_for_a_while)
        finally:
            order.append("descriptors closed")  # what converge's `finally: probed.close()` does

    async def scenario() -> None:
        task = asyncio.create_task(transaction())
        while not inside.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert order == ["thread done", "descriptors closed"]


def test_the_result_comes_back_when_nothing_is_cancelled() -> None:
    assert asyncio.run(_to_thread_to_the_end(lambda x: x * 2, 21)) == 42
