"""The background event loop that synchronous code awaits LanceDB's async API on."""

from __future__ import annotations

import asyncio
import threading

import pytest

from mmindex.store import aio


async def _double_later(value: int) -> int:
    await asyncio.sleep(0.01)
    return value * 2


async def _fail() -> None:
    raise ValueError("engine said no")


def test_results_and_errors_come_back_to_every_calling_thread() -> None:
    results: dict[int, int] = {}

    def call(value: int) -> None:
        results[value] = aio.run(_double_later(value))

    threads = [threading.Thread(target=call, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: n * 2 for n in range(8)}
    with pytest.raises(ValueError, match="engine said no"):
        aio.run(_fail())
    assert aio.run(_double_later(21)) == 42  # the loop survives a failed awaitable
