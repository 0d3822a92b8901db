"""The server's request batching: concurrent calls share one run, each gets its own answer, and
one bad item fails only itself."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from mmindex.server.coalesce import Coalescer


def test_waiting_calls_with_one_key_share_a_run_and_keep_their_answers() -> None:
    first_started, release = threading.Event(), threading.Event()
    runs: list[tuple[str, list[int]]] = []

    def run(key: str, items: list[int]) -> list[str]:
        runs.append((key, list(items)))
        if len(runs) == 1:  # hold the lock until everyone else is queued behind it
            first_started.set()
            assert release.wait(10)
        return [f"{key}:{item * item}" for item in items]

    coalescer: Coalescer[str, int, str] = Coalescer(run, threading.Lock())  # one lock for every key
    with ThreadPoolExecutor(9) as pool:
        first = pool.submit(coalescer, "a", 0)
        assert first_started.wait(10)
        calls = [pool.submit(coalescer, "a" if n % 2 else "b", n) for n in range(1, 9)]
        while sum(len(items) for items in coalescer._pending.values()) < 8:
            threading.Event().wait(0.01)
        release.set()
        answers = [call.result(10) for call in calls]
    assert first.result() == "a:0"
    assert answers == [f"{'a' if n % 2 else 'b'}:{n * n}" for n in range(1, 9)]
    assert len(runs) == 3  # the first call, then one run per key for the eight that waited
    assert sorted(len(items) for _, items in runs[1:]) == [4, 4]
    assert all(key == ("a" if items[0] % 2 else "b") for key, items in runs[1:])


def test_a_failing_item_fails_only_its_own_call() -> None:
    def run(key: None, items: list[int]) -> list[int]:
        if any(item < 0 for item in items):
            raise ValueError("negative")
        return [item + 1 for item in items]

    coalescer: Coalescer[None, int, int] = Coalescer(run)
    futures: list[Future[int]] = [Future() for _ in range(3)]
    coalescer._answer(None, list(zip([3, -1, 5], futures, strict=True)))
    assert futures[0].result() == 4 and futures[2].result() == 6
    with pytest.raises(ValueError, match="negative"):
        futures[1].result()
    assert coalescer.batches == 4  # the shared run, then each item alone


class Interrupted(BaseException):
    pass


def test_no_caller_is_left_waiting_when_a_batch_is_interrupted_or_answers_short() -> None:
    def interrupted(key: None, items: list[int]) -> list[int]:
        raise Interrupted

    def short(key: None, items: list[int]) -> list[int]:
        return [item for item in items[1:]]

    for run, error in ((interrupted, RuntimeError), (short, RuntimeError)):
        coalescer: Coalescer[None, int, int] = Coalescer(run)
        futures: list[Future[int]] = [Future() for _ in range(3)]
        try:
            coalescer._answer(None, list(zip([1, 2, 3], futures, strict=True)))
        except Interrupted:
            pass
        assert all(future.done() for future in futures)
        for future in futures:
            with pytest.raises(error):
                future.result()


def test_keys_without_a_shared_lock_run_side_by_side() -> None:
    both_running = threading.Barrier(2, timeout=10)

    def run(key: str, items: list[int]) -> list[int]:
        both_running.wait()  # deadlocks (BrokenBarrierError) if the keys ran one after the other
        return items

    coalescer: Coalescer[str, int, int] = Coalescer(run)
    first, second = next(
        (a, b)
        for a in ("k0", "k1", "k2", "k3")
        for b in ("k4", "k5", "k6", "k7")
        if hash(a) % len(coalescer._locks) != hash(b) % len(coalescer._locks)
    )
    with ThreadPoolExecutor(2) as pool:
        assert [
            call.result(10) for call in (pool.submit(coalescer, first, 1), pool.submit(coalescer, second, 2))
        ] == [1, 2]
