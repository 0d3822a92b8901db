"""Sharded indexing (--runner sharded in this process, --runner ray on a real local Ray): the same rows
as a local run, one commit per group of shards, and no duplicate or half-written rows after a lost
commit acknowledgement, a worker that dies, or a driver killed mid-run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from s3_support import S3Bucket, upload_corpus

import mmindex
from mmindex.config import Settings
from mmindex.distributed import commit as commit_module
from mmindex.store.reader import Store
from mmindex.store.upkeep import table_stats
from mmindex.toy.shapes import write_corpus

SHARDED = {"runner": "sharded", "shard_size": 7, "commit_every": 2}
COMPARED = ["uri", "key", "size", "version", "fingerprint", "sha256", "width", "height", "format",
            "caption", "caption_source", "thumbnail", "embed_model", "embed_mode"]  # fmt: skip


def rows_of(db: str, s3_endpoint: str | None = None) -> dict[str, dict[str, Any]]:
    store = Store.from_settings(Settings.from_env(db=db, s3_endpoint=s3_endpoint))
    rows = store.lancedb_table().to_arrow().to_pylist()
    by_uri = {row["uri"]: row for row in rows}
    assert len(by_uri) == len(rows), "one row per uri"
    return by_uri


def failures_of(db: str) -> set[tuple[str, str]]:
    table = Store(db).lancedb_table(failures=True)
    return {(row["uri"], row["stage"]) for row in table.to_arrow().to_pylist()}


def assert_same_tables(ours: dict[str, dict[str, Any]], reference: dict[str, dict[str, Any]]) -> None:
    assert set(ours) == set(reference)
    for uri, row in ours.items():
        assert {c: row[c] for c in COMPARED} == {c: reference[uri][c] for c in COMPARED}, uri
        for column in ("image_embedding", "text_embedding"):
            if reference[uri][column] is None:
                assert row[column] is None
            else:
                np.testing.assert_allclose(row[column], reference[uri][column], atol=1e-5)


@pytest.fixture(scope="module")
def mixed_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 shape images, some without captions, one of them corrupt."""
    root = tmp_path_factory.mktemp("distributed") / "corpus"
    write_corpus(root, 30, seed=5)
    victim = sorted(root.rglob("*.png"))[0]
    victim.write_bytes(b"not an image at all")
    return root


@pytest.fixture(scope="module")
def local_reference(mixed_corpus: Path) -> str:
    db = str(mixed_corpus.parent / "local-db")
    mmindex.index(str(mixed_corpus), db=db, model="toy-clip", progress=False)
    return db


def test_sharded_run_writes_what_a_local_run_writes_and_reruns_incrementally(
    mixed_corpus: Path, local_reference: str, tmp_path: Path
) -> None:
    db = str(tmp_path / "db")
    report = mmindex.index(str(mixed_corpus), db=db, model="toy-clip", progress=False, **SHARDED)
    assert (report.scanned, report.indexed, report.failed) == (30, 29, 1)
    assert report.counters["shards"] == 5 and report.counters["commits"] == 3
    assert_same_tables(rows_of(db), rows_of(local_reference))
    assert failures_of(db) == failures_of(local_reference) != set()
    assert not list((tmp_path / "db" / "_mmindex_staging").rglob("*.lance"))

    again = mmindex.index(str(mixed_corpus), db=db, model="toy-clip", progress=False, **SHARDED)
    assert (again.unchanged, again.indexed, again.counters["shards"]) == (29, 0, 0)

    # changed bytes are upserted in place; a file that turns corrupt loses its row
    corpus = tmp_path / "corpus"
    shutil.copytree(mixed_corpus, corpus)
    db_moved = str(tmp_path / "moved")
    mmindex.index(str(corpus), db=db_moved, model="toy-clip", progress=False, **SHARDED)
    images = sorted(p for p in corpus.rglob("*") if p.suffix in (".jpg", ".png") and p.stat().st_size > 100)
    images[0].write_bytes(images[1].read_bytes())
    images[2].write_bytes(b"broken now")
    changed = mmindex.index(str(corpus), db=db_moved, model="toy-clip", progress=False, **SHARDED)
    assert (changed.changed, changed.indexed, changed.failed) == (2, 1, 1)
    rows = rows_of(db_moved)
    assert str(images[2]) not in rows and len(rows) == 28
    assert rows[str(images[0])]["sha256"] == rows[str(images[1])]["sha256"]


def test_a_commit_whose_acknowledgement_is_lost_is_not_applied_twice(
    mixed_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_commit = commit_module.commit_transaction
    lost: list[str] = []

    def lose_first_append(uri: str, transaction: Any, storage_options: Any) -> Any:
        result = real_commit(uri, transaction, storage_options)
        if type(transaction.operation).__name__ == "Append" and not lost:
            lost.append(transaction.transaction_properties[commit_module.COMMIT_PROPERTY])
            raise OSError("connection reset after the commit landed")
        return result

    monkeypatch.setattr(commit_module, "commit_transaction", lose_first_append)
    db = str(tmp_path / "db")
    report = mmindex.index(str(mixed_corpus), db=db, model="toy-clip", progress=False, **SHARDED)
    assert lost and any("already committed" in note for note in report.notes)
    assert len(rows_of(db)) == 29  # rows_of asserts one row per uri
    rerun = mmindex.index(str(mixed_corpus), db=db, model="toy-clip", progress=False, **SHARDED)
    assert (rerun.unchanged, rerun.indexed) == (29, 0)
    assert len(rows_of(db)) == 29


def test_a_driver_killed_mid_run_shows_only_whole_groups_and_a_rerun_finishes(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 40, seed=9)
    db = str(tmp_path / "db")
    command = [sys.executable, "-m", "mmindex.cli", "index", str(corpus), "--db", db, "--model", "toy-clip",
               "--runner", "sharded", "--shard-size", "4", "--commit-every", "2", "--json"]  # fmt: skip
    env = {**os.environ, "MMINDEX_ORCHESTRATOR": "inprocess", "MMINDEX_TEST_SHARD_DELAY": "0.4"}
    driver = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: list[int] = []
    store = Store(db)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and driver.poll() is None:
            rows = store.lancedb_table().count_rows() if store.exists() else 0
            seen.append(rows)
            if rows >= 8:
                break
            time.sleep(0.05)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    visible = rows_of(db)
    assert 8 <= len(visible) < 40, seen
    assert all(count % 8 == 0 for count in seen)  # a group of 2 shards of 4 images, or nothing
    assert all(row["image_embedding"] is not None for row in visible.values())

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert len(rows_of(db)) == 40


# -- Ray ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray  # the dev extra installs it

    from mmindex.distributed.ray_engine import WORKER_NICENESS_ENV

    os.environ.setdefault(WORKER_NICENESS_ENV, "0")  # as a cluster mmindex starts itself: not starved
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024**2, logging_level="error")
    yield
    ray.shutdown()


def test_ray_runner_matches_local_and_survives_a_dead_worker(
    local_ray: None, mixed_corpus: Path, local_reference: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "crashed"
    monkeypatch.setenv("MMINDEX_TEST_CRASH_ONCE", str(marker))
    db = str(tmp_path / "db")
    report = mmindex.index(
        str(mixed_corpus), db=db, model="toy-clip", progress=False, runner="ray", shard_size=7, commit_every=2
    )
    assert marker.exists()  # a worker did die on its first shard
    assert (report.indexed, report.failed, report.counters["shards"]) == (29, 1, 5)
    assert_same_tables(rows_of(db), rows_of(local_reference))
    assert failures_of(db) == failures_of(local_reference)

    uncaptioned = sum(row["caption"] is None for row in rows_of(db).values())
    captions = mmindex.caption(
        db=db, caption_model="toy-captioner", progress=False, runner="ray", shard_size=4
    )
    assert captions.captioned == uncaptioned > 0
    assert all(row["caption"] and row["text_embedding"] for row in rows_of(db).values())

    # a generation built on the cluster holds what the same model made at index time
    built = mmindex.reembed(db=db, model="toy-clip", name="again", runner="ray", shard_size=8, progress=False)
    assert built.generation["state"] == "ready" and built.indexed == built.generation["rows"] == 29
    table = (
        Store(db).lancedb_table().search().select(["image_embedding", "image_embedding__again"]).limit(None)
    )
    both = table.to_arrow()
    np.testing.assert_allclose(
        np.stack(both["image_embedding__again"].to_numpy(zero_copy_only=False)),
        np.stack(both["image_embedding"].to_numpy(zero_copy_only=False)),
        atol=1e-5,
    )

    import ray

    # the variable the engine sets for a cluster it starts takes effect: workers at nice 0, not Ray's 15
    assert ray.get(ray.remote(lambda: os.nice(0)).remote()) == 0


@pytest.mark.parametrize(("kind", "mode"), [("avx2", "fp32 on cpu"), ("amx", "bf16 weights on cpu")])
def test_local_sharded_and_ray_runs_embed_alike_whichever_mode_auto_picks(
    local_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, mode: str
) -> None:
    """The driver's CPU kind is forced (the Ray workers, in other processes, are not patched): they
    must follow it, so every runner writes the same mode and the same vectors."""
    import mmindex.models.precision as precision

    monkeypatch.delenv("MMINDEX_CPU_KIND")
    monkeypatch.setattr(precision, "detected_cpu_kind", lambda: kind)
    corpus = tmp_path / "corpus"
    write_corpus(corpus, 8, seed=13)
    dbs = {runner: str(tmp_path / runner) for runner in ("local", "sharded", "ray")}
    for runner, db in dbs.items():
        mmindex.index(str(corpus), db=db, model="toy-clip", progress=False, runner=runner, shard_size=3)
    local = rows_of(dbs["local"])
    assert {row["embed_mode"] for row in local.values()} == {mode}
    assert table_stats(Store(dbs["local"]))["embed_modes"] == {mode: 8}
    assert_same_tables(rows_of(dbs["sharded"]), local)
    assert_same_tables(rows_of(dbs["ray"]), local)


def test_ray_runner_on_s3_matches_local(
    local_ray: None, s3_bucket: S3Bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload_corpus(s3_bucket, tmp_path / "upload", prefix="photos/", count=16)
    monkeypatch.setenv("MMINDEX_S3_ENDPOINT", s3_bucket.endpoint)
    source = s3_bucket.uri("photos")
    local_db, ray_db = s3_bucket.uri("local-db"), s3_bucket.uri("ray-db")
    mmindex.index(source, db=local_db, model="toy-clip", progress=False)
    report = mmindex.index(source, db=ray_db, model="toy-clip", progress=False, runner="ray", shard_size=5)
    assert (report.indexed, report.counters["shards"]) == (16, 4)
    assert_same_tables(rows_of(ray_db, s3_bucket.endpoint), rows_of(local_db, s3_bucket.endpoint))


def test_maintenance_sweeps_the_staging_data_of_interrupted_runs(tmp_path: Path, corpus: Path) -> None:
    import lance
    import pyarrow as pa

    from mmindex.store.staging import staging_uri

    db = str(tmp_path / "db")
    mmindex.index(str(corpus), db=db, model="toy-clip", progress=False, **SHARDED)
    old = (datetime.now(UTC) - timedelta(hours=3)).strftime("%Y%m%dT%H%M%S") + "-deadbeef"
    new = datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-cafef00d"
    for run_id in (old, new):
        lance.write_dataset(pa.table({"id": ["x"]}), staging_uri(db, "images", run_id, "shard-a"))
    report = mmindex.maintain(db=db)
    runs = {p.name for p in (tmp_path / "db" / "_mmindex_staging" / "images").iterdir()}
    assert runs == {new}
    assert any("staging data of 1 interrupted" in action for action in report.actions)


def test_sharded_caption_backfill_matches_a_local_one(mixed_corpus: Path, tmp_path: Path) -> None:
    dbs = {}
    for runner in ("local", "sharded"):
        db = str(tmp_path / runner)
        mmindex.index(str(mixed_corpus), db=db, model="toy-clip", progress=False)
        report = mmindex.caption(db=db, caption_model="toy-captioner", progress=False, runner=runner,
                                 shard_size=3, commit_every=2)  # fmt: skip
        dbs[runner] = (db, report)
    (local_db, local), (sharded_db, sharded) = dbs["local"], dbs["sharded"]
    assert sharded.captioned == local.captioned > 0
    ours, reference = rows_of(sharded_db), rows_of(local_db)
    assert {u: (r["caption"], r["caption_source"]) for u, r in ours.items()} == {
        u: (r["caption"], r["caption_source"]) for u, r in reference.items()
    }
    for uri, row in ours.items():
        np.testing.assert_allclose(row["text_embedding"], reference[uri]["text_embedding"], atol=1e-5)
    again = mmindex.caption(db=sharded_db, caption_model="toy-captioner", progress=False, runner="sharded")
    assert again.captioned == 0
