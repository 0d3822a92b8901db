"""One writer per table: a second process waits, gives up with a clear message, or takes over at
once when the holder dies."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmindex.store.lock import TableBusy, TableLock, lock_path

HOLD = """
import sys, time
from pathlib import Path
from mmindex.store.lock import TableLock
lock = TableLock(Path(sys.argv[1]), "images")
with lock:
    print("held", flush=True)
    start = time.time()
    time.sleep(float(sys.argv[2]))
    print(start, time.time(), flush=True)
"""


def hold(path: Path, seconds: float) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_a_second_writer_waits_for_the_first(tmp_path: Path) -> None:
    path = tmp_path / ".images.mmindex-lock"
    first = hold(path, 1.5)
    waited_from = time.time()
    with TableLock(path, "images") as lock:
        acquired = time.time()
        assert lock.enforced
    first_start, first_end = map(float, first.communicate()[0].split())
    assert acquired >= first_end - 0.05 and acquired - waited_from >= 1.0


def test_giving_up_names_the_holder(tmp_path: Path) -> None:
    path = tmp_path / ".images.mmindex-lock"
    holder = hold(path, 30)
    try:
        with (
            pytest.raises(TableBusy, match=rf"pid {holder.pid} on .* gave up after"),
            TableLock(path, "images", timeout=0.5),
        ):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_releases_the_lock_at_once(tmp_path: Path) -> None:
    path = tmp_path / ".images.mmindex-lock"
    holder = hold(path, 60)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    started = time.monotonic()
    with TableLock(path, "images", timeout=5):
        assert time.monotonic() - started < 1.0


def test_object_store_databases_have_no_file_lock() -> None:
    assert lock_path("s3://bucket/db", "images") is None
    assert lock_path("./mmindex.lancedb", "images") == Path("mmindex.lancedb/.images.mmindex-lock")
    with TableLock(None, "images") as lock:
        assert not lock.enforced
