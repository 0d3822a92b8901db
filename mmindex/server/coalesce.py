"""Concurrent requests that can share one piece of work run as one batch.

A forward pass of the text tower for eight queries costs little more than one, and a LanceDB query
with eight query vectors a fraction of eight queries, so a server under load should not queue its
clients one by one behind the model or the table.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Item = TypeVar("Item")
Answer = TypeVar("Answer")


class Coalescer(Generic[Key, Item, Answer]):
    """Calls with the same key that wait at the same time are answered by one `run(key, items)`.

    Whoever takes the lock runs every item then waiting under its key, in one batch; callers whose
    answer is ready by the time they get the lock just return it. If a batch of several fails, each
    of its items is run alone, so one bad request never fails the requests it was batched with.
    """

    def __init__(
        self, run: Callable[[Key, list[Item]], Sequence[Answer]], lock: threading.Lock | None = None
    ) -> None:
        self._run = run
        self._lock = lock or threading.Lock()  # may be shared with other users of the same resource
        self._pending_lock = threading.Lock()
        self._pending: dict[Key, list[tuple[Item, Future[Answer]]]] = {}
        self.batches = 0  # batches run, for tests and stats
        self.items = 0

    def __call__(self, key: Key, item: Item) -> Answer:
        waiting: Future[Answer] = Future()
        with self._pending_lock:
            self._pending.setdefault(key, []).append((item, waiting))
        with self._lock:
            if not waiting.done():
                with self._pending_lock:
                    batch = self._pending.pop(key)
                self._answer(key, batch)
        return waiting.result()

    def _answer(self, key: Key, batch: list[tuple[Item, Future[Answer]]]) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            answers = self._run(key, [item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                batch[0][1].set_exception(exc)
                return
            for single in batch:
                self._answer(key, [single])
            return
        except BaseException as exc:  # interrupted: nobody may be left waiting
            for _, future in batch:
                future.set_exception(exc)
            raise
        for (_, future), answer in zip(batch, answers, strict=True):
            future.set_result(answer)
