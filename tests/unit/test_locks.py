"""One writer per table: a second process waits, gives up with a clear message, or takes over at
once when the holder dies."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from mmindex.store.lock import TableBusy, TableLock, lock_path

HOLD = """
import sys
from pathlib import Path
from mmindex.store.lock import TableLock
with TableLock(Path(sys.argv[1]), "images"):
    print("held", flush=True)
    sys.stdin.readline()  # hold until told to let go (or killed)
"""


def hold(path: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def release(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.write("go\n")
    process.stdin.flush()
    process.wait(timeout=60)


def test_a_second_writer_waits_for_the_first(tmp_path: Path) -> None:
    path = tmp_path / ".images.mmindex-lock"
    holder = hold(path)
    acquired = threading.Event()

    def second_writer() -> None:
        with TableLock(path, "images") as lock:
            assert lock.enforced
            acquired.set()

    waiter = threading.Thread(target=second_writer)
    waiter.start()
    with pytest.raises(TableBusy):  # while the first holds it, nobody else gets the table
        with TableLock(path, "images", timeout=0):
            pass
    assert not acquired.is_set()
    release(holder)
    assert acquired.wait(timeout=60)  # the waiting writer got it once the first let go
    waiter.join()


def test_giving_up_names_the_holder(tmp_path: Path) -> None:
    path = tmp_path / ".images.mmindex-lock"
    holder = hold(path)
    try:
        with (
            pytest.raises(TableBusy, match=rf"pid {holder.pid} on .* gave up after"),
            TableLock(path, "images", timeout=0.5),
        ):
            pass
    finally:
        release(holder)


def test_a_killed_holder_releases_the_lock_at_once(tmp_path: Path) -> None:
    path = tmp_path / ".images.mmindex-lock"
    holder = hold(path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with TableLock(path, "images", timeout=0) as lock:  # free at once: timeout 0 means "no waiting"
        assert lock.enforced


def test_object_store_databases_have_no_file_lock() -> None:
    assert lock_path("s3://bucket/db", "images") is None
    assert lock_path("./mmindex.lancedb", "images") == Path("mmindex.lancedb/.images.mmindex-lock")
    with TableLock(None, "images") as lock:
        assert not lock.enforced
