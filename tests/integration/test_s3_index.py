"""Indexing from S3 and into a LanceDB kept on S3, end to end through the CLI, against a real S3 HTTP
server (moto_server on 127.0.0.1), with and without a proxy that makes the network flaky."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import CliRunner
from s3_support import Faults, S3Bucket, upload_corpus

from mmindex.config import Settings
from mmindex.store.reader import Store


def index(cli: CliRunner, source: str, db: str, endpoint: str, *extra: str) -> dict[str, Any]:
    result = cli("index", source, "--db", db, "--model", "toy-clip", "--json", *extra,
                 env={"MMINDEX_S3_ENDPOINT": endpoint})  # fmt: skip
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert isinstance(counts, dict)
    return counts


def table_rows(db: str, endpoint: str | None = None) -> dict[str, dict[str, Any]]:
    settings = Settings.from_env(db=db, s3_endpoint=endpoint)
    rows = Store.from_settings(settings).lancedb_table().to_arrow().to_pylist()
    return {row["key"]: row for row in rows}


def test_sidecars_incremental_rerun_overwrite_and_prune(
    cli: CliRunner, s3_bucket: S3Bucket, faulty_proxy: Any, tmp_path: Path
) -> None:
    corpus = upload_corpus(s3_bucket, tmp_path / "upload", prefix="photos/", count=24)
    db = str(tmp_path / "db")
    proxy = faulty_proxy(s3_bucket.endpoint)  # no faults: it only counts requests
    source = s3_bucket.uri("photos")

    first = index(cli, source, db, proxy.endpoint)
    rows = table_rows(db)
    assert (first["scanned"], first["indexed"], first["failed"]) == (24, 24, 0)
    assert set(rows) == set(corpus)
    assert all(rows[key]["caption"] == corpus[key].caption for key in corpus)
    assert all(row["uri"] == s3_bucket.uri("photos/" + key) for key, row in rows.items())
    assert all(row["version"] == s3_bucket.etag("photos/" + key) for key, row in rows.items())

    gets_before = proxy.object_gets(s3_bucket.name)
    again = index(cli, source, db, proxy.endpoint)
    assert (again["unchanged"], again["indexed"]) == (24, 0)
    assert proxy.object_gets(s3_bucket.name) == gets_before  # listed and compared, nothing fetched

    replaced, removed = sorted(corpus)[0], sorted(corpus)[1]
    s3_bucket.put("photos/" + replaced, corpus[sorted(corpus)[5]].data)
    s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key="photos/" + removed)
    changed = index(cli, source, db, proxy.endpoint, "--prune")
    rows = table_rows(db)
    assert (changed["changed"], changed["indexed"], changed["pruned"]) == (1, 1, 1)
    assert removed not in rows and len(rows) == 23
    assert rows[replaced]["version"] == s3_bucket.etag("photos/" + replaced)
    assert rows[replaced]["sha256"] == rows[sorted(corpus)[5]]["sha256"]


def test_manifest_in_s3_as_source_and_as_captions(
    cli: CliRunner, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    corpus = upload_corpus(s3_bucket, tmp_path / "upload", prefix="set/", count=12)
    keys = sorted(corpus)
    buffer = pa.BufferOutputStream()
    pq.write_table(pa.table({"path": keys[:6], "caption": [f"manifest {i}" for i in range(6)]}), buffer)
    s3_bucket.put("set/manifest.parquet", buffer.getvalue().to_pybytes())

    listed = index(cli, s3_bucket.uri("set/manifest.parquet"), str(tmp_path / "a"), s3_bucket.endpoint)
    assert listed["indexed"] == 6
    assert {k: r["caption"] for k, r in table_rows(str(tmp_path / "a")).items()} == {
        key: f"manifest {i}" for i, key in enumerate(keys[:6])
    }

    captioned = index(
        cli, s3_bucket.uri("set"), str(tmp_path / "b"), s3_bucket.endpoint,
        "--captions", s3_bucket.uri("set/manifest.parquet"),
    )  # fmt: skip
    rows = table_rows(str(tmp_path / "b"))
    assert captioned["indexed"] == 12
    assert all(rows[key]["caption"] == f"manifest {i}" for i, key in enumerate(keys[:6]))
    assert all(rows[key]["caption"] == corpus[key].caption for key in keys[6:])


def test_a_flaky_network_costs_retries_not_data(
    cli: CliRunner, s3_bucket: S3Bucket, faulty_proxy: Any, tmp_path: Path
) -> None:
    corpus = upload_corpus(s3_bucket, tmp_path / "upload", prefix="p/", count=40, json_every=4)
    proxy = faulty_proxy(s3_bucket.endpoint, Faults(slow_down=0.25, drop=0.1, truncate=0.1, seed=11))
    db = str(tmp_path / "db")

    counts = index(cli, s3_bucket.uri("p"), db, proxy.endpoint, "--batch-size", "8")

    rows = table_rows(db)
    assert (counts["indexed"], counts["failed"]) == (40, 0)
    assert sorted(rows) == sorted(corpus) and len({r["id"] for r in rows.values()}) == 40
    assert all(rows[key]["caption"] == corpus[key].caption for key in corpus)
    assert proxy.injected["slow_down"] > 0 and proxy.injected["drop"] > 0 and proxy.injected["truncate"] > 0
    import hashlib

    assert all(rows[k]["sha256"] == hashlib.sha256(corpus[k].data).hexdigest() for k in corpus)


def test_an_object_that_never_comes_back_is_a_failure_row_and_the_run_goes_on(
    cli: CliRunner, s3_bucket: S3Bucket, faulty_proxy: Any, tmp_path: Path
) -> None:
    corpus = upload_corpus(s3_bucket, tmp_path / "upload", prefix="q/", count=10)
    doomed = sorted(k for k in corpus if k.endswith(".jpg"))[0]
    proxy = faulty_proxy(s3_bucket.endpoint, Faults(always={f"/{s3_bucket.name}/q/{doomed}": "slow_down"}))
    db = str(tmp_path / "db")
    counts = index(cli, s3_bucket.uri("q"), db, proxy.endpoint)
    assert (counts["indexed"], counts["failed"]) == (9, 1)
    failures = json.loads(cli("failures", "--db", db, "--json").stdout)
    assert [(f["key"], f["stage"]) for f in failures] == [(doomed, "fetch")]
    assert failures[0]["retryable"] is True


def test_the_database_itself_on_s3(cli: CliRunner, s3_bucket: S3Bucket, tmp_path: Path) -> None:
    upload_corpus(s3_bucket, tmp_path / "upload", prefix="img/", count=12)
    s3_bucket.put("img/broken.jpg", b"\xff\xd8\xff not an image")
    db = s3_bucket.uri("index/mmindex.lancedb")
    env = {"MMINDEX_S3_ENDPOINT": s3_bucket.endpoint}
    assert index(cli, s3_bucket.uri("img"), db, s3_bucket.endpoint)["indexed"] == 12
    assert index(cli, s3_bucket.uri("img"), db, s3_bucket.endpoint)["unchanged"] == 12

    hits = json.loads(cli("search", "a red circle", "--db", db, "-k", "2", "--json", env=env).stdout)
    assert len(hits) == 2 and hits[0]["uri"].startswith(s3_bucket.uri("img/"))
    stats = json.loads(cli("stats", "--db", db, "--json", env=env).stdout)
    assert (stats["rows"], stats["failures"]) == (12, 1)
    failures = json.loads(cli("failures", "--db", db, "--json", env=env).stdout)
    assert [f["key"] for f in failures] == ["broken.jpg"]
    maintained = cli("maintain", "--db", db, "--retention", "1h", "--json", env=env)
    assert maintained.returncode == 0, maintained.stderr
    after = json.loads(maintained.stdout.strip().splitlines()[-1])["after"]["images"]
    assert after["rows"] == 12 and sum(after["unindexed_rows"].values()) == 0
    assert len(table_rows(db, s3_bucket.endpoint)) == 12


def test_wrong_bucket_and_denied_credentials_exit_2_before_any_model_loads(
    cli: CliRunner, s3_bucket: S3Bucket, s3_auth: Any, tmp_path: Path
) -> None:
    db = str(tmp_path / "db")
    # a model directory that does not exist: had the run got as far as the model, the error would say so
    no_model = str(tmp_path / "model-that-would-be-loaded-later")
    missing = cli("index", "s3://no-such-bucket-here/x", "--db", db, "--model", no_model,
                  env={"MMINDEX_S3_ENDPOINT": s3_bucket.endpoint})  # fmt: skip
    assert missing.returncode == 2
    assert (
        missing.stderr.strip().splitlines() == [missing.stderr.strip()]
        and "no-such-bucket-here" in missing.stderr
    )
    assert (
        "does not exist" in missing.stderr and "model" not in missing.stderr.split("no-such-bucket-here")[1]
    )

    env = {
        "MMINDEX_S3_ENDPOINT": s3_auth.endpoint,
        "AWS_SHARED_CREDENTIALS_FILE": str(s3_auth.credentials_file),
    }
    for profile in ("unknown-key", "wrong-secret", "nobody"):
        denied = cli("index", f"s3://{s3_auth.bucket}/photos", "--db", db, "--model", no_model,
                     env={**env, "MMINDEX_S3_PROFILE": profile})  # fmt: skip
        assert denied.returncode == 2, denied.stderr
        assert len(denied.stderr.strip().splitlines()) == 1
        assert not any(secret in denied.stderr for secret in s3_auth.secrets)

    bad_db = cli(
        "stats", "--db", "s3://no-such-bucket-here/db", env={"MMINDEX_S3_ENDPOINT": s3_bucket.endpoint}
    )
    assert bad_db.returncode == 2 and "bucket does not exist" in bad_db.stderr


def test_two_runs_on_one_s3_table_take_turns_and_leave_no_duplicates(
    s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    """No file lock reaches a database on S3: the flows' per-table Prefect concurrency slot serialises
    the two runs (both index the same 30 new images)."""
    import os
    import subprocess
    import sys

    upload_corpus(s3_bucket, tmp_path / "upload", prefix="both/", count=30)
    db = s3_bucket.uri("shared/mmindex.lancedb")
    command = [sys.executable, "-m", "mmindex.cli", "index", s3_bucket.uri("both"), "--db", db,
               "--model", "toy-clip", "--batch-size", "4", "--json"]  # fmt: skip
    env = {**os.environ, "MMINDEX_S3_ENDPOINT": s3_bucket.endpoint, "MMINDEX_WRITE_ROWS": "4"}
    runs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err for _, err in outputs]
    counts = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert sorted(c["indexed"] for c in counts) == [0, 30]  # the second saw the first's work as done
    rows = table_rows(db, s3_bucket.endpoint)
    assert len(rows) == 30 and len({r["id"] for r in rows.values()}) == 30


def test_a_flow_waits_for_the_s3_tables_write_slot_or_gives_up(
    cli: CliRunner, s3_bucket: S3Bucket, tmp_path: Path
) -> None:
    from mmindex.flows.locking import table_slot

    upload_corpus(s3_bucket, tmp_path / "upload", prefix="slot/", count=4)
    db = s3_bucket.uri("slot-db")
    env = {"MMINDEX_S3_ENDPOINT": s3_bucket.endpoint}
    with table_slot(db, "images"):  # another flow run holds the table
        refused = cli(
            "index", s3_bucket.uri("slot"), "--db", db, "--model", "toy-clip", "--lock-timeout", "2", env=env
        )
    assert refused.returncode == 2 and "being written by another flow run" in refused.stderr
    assert cli("index", s3_bucket.uri("slot"), "--db", db, "--model", "toy-clip", env=env).returncode == 0


def test_notebook_runs_on_s3_take_the_flows_write_slot_or_say_they_run_unguarded(
    s3_bucket: S3Bucket, tmp_path: Path, monkeypatch: Any
) -> None:
    import os
    import subprocess
    import sys

    import pytest

    import mmindex
    from mmindex.flows.locking import table_slot
    from mmindex.store.lock import TableBusy

    upload_corpus(s3_bucket, tmp_path / "upload", prefix="nb/", count=4)
    db = s3_bucket.uri("nb-db")
    monkeypatch.setenv("MMINDEX_S3_ENDPOINT", s3_bucket.endpoint)
    with table_slot(db, "images"), pytest.raises(TableBusy, match="another flow run"):  # a flow writes it
        mmindex.index(s3_bucket.uri("nb"), db=db, model="toy-clip", lock_timeout=2, progress=False)

    code = (
        "import sys, mmindex; "
        f"r = mmindex.index({s3_bucket.uri('nb')!r}, db={db!r}, model='toy-clip', progress=False); "
        "print(r.indexed, 'prefect' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # no Prefect API configured
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["4", "False"]  # indexed, and Prefect was never imported
    assert "without a write slot" in result.stderr  # and it says so
