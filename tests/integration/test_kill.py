"""A run killed with SIGKILL at any moment is finished by the next run: one row per good image."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from mmindex.store.reader import Store
from mmindex.toy.shapes import write_corpus


def table_rows(db: Path) -> list[dict[str, object]]:
    store = Store(str(db))
    if not store.exists():
        return []
    return store.lancedb_table().search().select(["id", "uri"]).limit(None).to_arrow().to_pylist()


def wait_until(ready: Callable[[], bool], process: subprocess.Popen[bytes], timeout: float = 120) -> None:
    """Poll (with a deadline) until `ready()` or the run has ended by itself."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if ready():
                return
        except Exception:  # the table may be mid-creation; keep polling
            pass
        time.sleep(0.02)


def test_sigkill_at_random_moments_then_a_rerun_completes_the_job(tmp_path: Path, tiny_clip: str) -> None:
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 400, seed=5, size_range=(40, 64))
    (corpus / "broken-1.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (corpus / "broken-2.png").write_bytes(b"")
    db = tmp_path / "db"
    command = [
        sys.executable,
        "-m",
        "mmindex.cli",
        "index",
        str(corpus),
        "--db",
        str(db),
        "--model",
        tiny_clip,
        "--batch-size",
        "4",
        "--no-progress",
        "--json",
    ]
    env = {
        **os.environ,
        "MMINDEX_WRITE_ROWS": "4",
        "MMINDEX_WRITE_SECONDS": "0",
        "MMINDEX_CHUNK_SIZE": "4",
    }  # commit after every batch
    rng = random.Random(1234)
    lock = db / ".images.mmindex-lock"
    counts = [0]
    for attempt in range(5):
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if attempt == 0:  # as soon as the run holds the table, before it has written rows
            wait_until(lock.exists, process)
        else:  # after this run has committed a few more batches (a different number each time)
            target = counts[-1] + rng.randint(1, 40)
            wait_until(lambda target=target: len(table_rows(db)) >= target, process)  # type: ignore[misc]
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
        process.wait()
        rows = table_rows(db)  # readable after every kill, never a duplicate
        assert len(rows) == len({row["uri"] for row in rows}) == len({row["id"] for row in rows})
        counts.append(len(rows))

    final = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr

    rows = table_rows(db)
    good = sorted(
        str(p.resolve()) for p in corpus.rglob("*") if p.suffix in (".jpg", ".png") and "broken" not in p.name
    )
    assert sorted(str(row["uri"]) for row in rows) == good
    assert max(Counter(row["id"] for row in rows).values()) == 1
    failures = Store(str(db)).failure_rows()
    assert sorted((f["key"], f["stage"]) for f in failures) == [
        ("broken-1.jpg", "decode"),
        ("broken-2.png", "decode"),
    ]
