"""Concurrent requests that can share one piece of work run as one batch.

A forward pass of the text tower for eight queries costs little more than one, and a LanceDB query
with eight query vectors well under half of eight queries, so a server under load should not queue
its clients one by one behind the model or the table.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Item = TypeVar("Item")
Answer = TypeVar("Answer")

LOCK_STRIPES = 4  # keys that share no lock can run at the same time


class Coalescer(Generic[Key, Item, Answer]):
    """Calls with the same key that wait at the same time are answered by one `run(key, items)`.

    The first caller of a key is its batch's leader: it waits for the lock, then runs every item
    that arrived under its key meanwhile, in one batch; the others only wait for their answer. If a
    batch of several fails, each of its items is run alone, so one bad request never fails the
    requests it was batched with. `lock` is shared with other users of the same resource (the
    model); without it, keys are spread over a few locks of their own.
    """

    def __init__(
        self, run: Callable[[Key, list[Item]], Sequence[Answer]], lock: threading.Lock | None = None
    ) -> None:
        self._run = run
        self._locks = [lock] if lock is not None else [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._pending_lock = threading.Lock()
        self._pending: dict[Key, list[tuple[Item, Future[Answer]]]] = {}
        self.batches = 0  # batches run, for tests and stats
        self.items = 0

    def __call__(self, key: Key, item: Item) -> Answer:
        waiting: Future[Answer] = Future()
        with self._pending_lock:
            batch = self._pending.get(key)
            leader = batch is None
            if batch is None:
                batch = self._pending[key] = []
            batch.append((item, waiting))
        if leader:
            with self._locks[hash(key) % len(self._locks)]:
                with self._pending_lock:
                    del self._pending[key]  # later arrivals start the next batch
                self._answer(key, batch)
        return waiting.result()

    def _answer(self, key: Key, batch: list[tuple[Item, Future[Answer]]]) -> None:
        """Answer every future in `batch`, whatever happens (no caller may be left waiting)."""
        with self._pending_lock:  # batches of different keys may run at once
            self.batches += 1
            self.items += len(batch)
        try:
            answers = list(self._run(key, [item for item, _ in batch]))
            if len(answers) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} got {len(answers)} answers")
        except Exception as exc:
            if len(batch) == 1:
                batch[0][1].set_exception(exc)
            else:
                for single in batch:
                    self._answer(key, [single])
        else:
            for (_, future), answer in zip(batch, answers, strict=True):
                future.set_result(answer)
        finally:
            for _, future in batch:
                if not future.done():  # interrupted (a BaseException) before its answer
                    future.set_exception(RuntimeError("the batch was interrupted"))
