"""One background event loop for LanceDB's async API, so synchronous code can await it.

LanceDB's synchronous query builder wraps the async one and crosses into its event loop several
times per query (the table schema is read three times to plan each query): about 2 ms of a 10 ms
vector query at 1M rows. The hot path (vector search) awaits the async builder here in one crossing.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_owner = 0  # the process that started the loop: a forked child has the loop but not its thread
_lock = threading.Lock()


def run(awaitable: Awaitable[T]) -> T:
    """The awaitable's result, awaited on the background loop (any thread may call this)."""
    return asyncio.run_coroutine_threadsafe(_awaited(awaitable), _background_loop()).result()


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop, _owner
    if _loop is None or _owner != os.getpid():
        with _lock:
            if _loop is None or _owner != os.getpid():
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="mmindex-lancedb-async", daemon=True).start()
                _loop, _owner = loop, os.getpid()
    return _loop
