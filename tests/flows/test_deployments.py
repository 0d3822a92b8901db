"""The project's own deployments on a real Prefect server: deploy them, trigger ingestion, a backfill
with parameters and maintenance, run them with a process worker, and check the table."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from prefect import get_client
from prefect.deployments import run_deployment

from mmindex.store.reader import Store
from mmindex.toy.shapes import write_corpus

PROJECT = Path(__file__).resolve().parents[2]


def deploy(pool: str, corpus: Path, db: Path, *extra: str) -> str:
    result = subprocess.run(
        [sys.executable, str(PROJECT / "deployments" / "deploy.py"), "--source", str(corpus), "--db", str(db),
         "--model", "toy-clip", "--caption-model", "toy-captioner", "--pool", pool, *extra],
        capture_output=True, text=True, timeout=300, env=os.environ.copy(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def run_worker(pool: str) -> None:
    """A process worker that runs what is due now and exits (as `prefect worker start` would, for good)."""
    env = {**os.environ, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "5"}
    worker = subprocess.run(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--run-once"],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert worker.returncode == 0, worker.stdout[-3000:] + worker.stderr[-3000:]


def final_state(flow_run_id: Any, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final() or time.monotonic() > deadline:
                return run


def keys(db: Path) -> list[str]:
    table = Store(str(db)).lancedb_table()
    return table.search().select(["key"]).limit(None).to_arrow().column("key").to_pylist()


def test_deployed_ingestion_backfill_caption_and_maintenance(tmp_path: Path) -> None:
    corpus, db = tmp_path / "corpus", tmp_path / "db"
    write_corpus(corpus, 40, seed=17, captioned_fraction=0.5)
    pool = f"mmindex-test-{uuid.uuid4().hex[:8]}"
    output = deploy(pool, corpus, db, "--retention", "1h")
    assert (
        "deployed mmindex-index/nightly-ingest" in output
        and "deployed mmindex-maintain/maintenance" in output
    )

    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("mmindex-index/nightly-ingest")
        assert nightly.schedules and nightly.schedules[0].schedule.cron == "0 2 * * *"  # type: ignore[union-attr]
        assert nightly.parameters["source"] == str(corpus) and nightly.work_pool_name == pool

    # a backfill over part of the corpus, with parameters given at trigger time
    backfill = run_deployment("mmindex-index/backfill", parameters={"prefix": "set-a/"}, timeout=0)
    run_worker(pool)
    assert final_state(backfill.id).state.is_completed()
    indexed = keys(db)
    assert indexed and all(key.startswith("set-a/") for key in indexed)

    # the nightly ingestion and a second backfill at once, on the same table: one waits for the other
    nightly_run = run_deployment("mmindex-index/nightly-ingest", timeout=0)
    backfill_run = run_deployment("mmindex-index/backfill", parameters={"prefix": "set-b/"}, timeout=0)
    run_worker(pool)
    assert (
        final_state(nightly_run.id).state.is_completed() and final_state(backfill_run.id).state.is_completed()
    )
    counts = Counter(keys(db))
    assert len(counts) == 40 and max(counts.values()) == 1

    caption = run_deployment("mmindex-caption-missing/caption-backfill", parameters={"limit": 5}, timeout=0)
    run_worker(pool)
    assert final_state(caption.id).state.is_completed()
    assert Store(str(db)).lancedb_table().count_rows("caption_source = 'generated'") == 5

    # rows appended outside mmindex's writer (an analyst, a killed run) are not yet in the indices
    table = Store(str(db)).lancedb_table()
    copies = table.search().limit(8).to_arrow()
    copies = copies.set_column(0, "id", pa.array([uuid.uuid4().hex for _ in range(8)]))
    table.add(copies)
    assert table.index_stats("caption_idx").num_unindexed_rows > 0
    versions_before = {v["version"] for v in table.list_versions()}

    maintenance = run_deployment("mmindex-maintain/maintenance", timeout=0)
    run_worker(pool)
    assert final_state(maintenance.id).state.is_completed()
    after = Store(str(db)).lancedb_table()
    assert all(after.index_stats(i.name).num_unindexed_rows == 0 for i in after.list_indices())
    assert versions_before <= {v["version"] for v in after.list_versions()}  # 1h: all recent ones kept
    hits = after.search("green", query_type="fts").limit(3).to_arrow()
    assert hits.num_rows > 0
    query = np.asarray(after.search().limit(1).to_arrow().column("image_embedding")[0].as_py(), np.float32)
    assert after.search(query, vector_column_name="image_embedding").limit(1).to_arrow().num_rows == 1
