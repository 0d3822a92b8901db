"""Staging data of sharded runs: per-run folders beside the tables (where LanceDB lists no table),
holding the rows that replace existing ones until the driver's upsert applies them.

A run removes its folder when it ends; a crashed run's folder is garbage that maintenance sweeps
(`sweep_staging`), as Lance's own cleanup removes the unreferenced fragments such a run wrote.
"""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

STAGING_DIR = "_mmindex_staging"
RUN_ID_TIME = "%Y%m%dT%H%M%S"  # run ids start with their UTC start time


def staging_root(db_uri: str, table: str, run_id: str) -> str:
    """The folder of one run's staging datasets."""
    return f"{db_uri.rstrip('/')}/{STAGING_DIR}/{table}/{run_id}"


def staging_uri(db_uri: str, table: str, run_id: str, name: str) -> str:
    return f"{staging_root(db_uri, table, run_id)}/{name}.lance"


def drop_staging(uri: str, storage_options: dict[str, str] | None) -> None:
    """Remove a staging dataset or folder (best effort: what stays is garbage maintenance removes)."""
    import lance

    try:
        lance.LanceDataset.drop(uri, storage_options, ignore_not_found=True)
    except Exception as exc:  # left for the next sweep, not a failed run
        log.warning("cannot remove staging data %s: %s", uri, exc)
    if "://" not in uri and Path(uri).is_dir():  # lance leaves the empty local folder
        shutil.rmtree(uri, ignore_errors=True)


def run_folders(db_uri: str, table: str, storage_options: dict[str, str] | None) -> list[str]:
    """The run ids that have a staging folder for `table`."""
    root = f"{db_uri.rstrip('/')}/{STAGING_DIR}/{table}"
    if not db_uri.startswith("s3://"):
        path = Path(root)
        return sorted(p.name for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
    bucket, _, prefix = root[len("s3://") :].partition("/")
    client = _s3_client(storage_options or {})
    runs: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix + "/", Delimiter="/"
    ):
        for common in page.get("CommonPrefixes", []):
            runs.add(common["Prefix"][len(prefix) + 1 :].rstrip("/"))
    return sorted(runs)


def sweep_staging(
    db_uri: str, table: str, storage_options: dict[str, str] | None, older_than: timedelta
) -> int:
    """Remove staging folders of runs that started more than `older_than` ago; returns how many."""
    cutoff = datetime.now(UTC) - older_than
    removed = 0
    for run_id in run_folders(db_uri, table, storage_options):
        try:
            started = datetime.strptime(run_id.split("-", 1)[0], RUN_ID_TIME).replace(tzinfo=UTC)
        except ValueError:
            continue  # not a run folder of ours
        if started < cutoff:
            drop_staging(staging_root(db_uri, table, run_id), storage_options)
            removed += 1
    return removed


def _s3_client(options: dict[str, str]) -> Any:
    """A boto3 client from LanceDB storage options (what the store was opened with)."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=options.get("endpoint"),
        region_name=options.get("region"),
        aws_access_key_id=options.get("aws_access_key_id"),
        aws_secret_access_key=options.get("aws_secret_access_key"),
        aws_session_token=options.get("aws_session_token"),
    )
