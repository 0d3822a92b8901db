"""Opening a LanceDB database and its tables, with one-line errors instead of walls of XML."""

from __future__ import annotations

import os
import re
from datetime import timedelta
from typing import Any

from mmindex.config import Settings
from mmindex.errors import ConfigError, StoreError

os.environ.setdefault("LANCEDB_LOG", "error")  # lance prints a WARN per query that omits _distance

# Reads check for newer versions every time: a handle then always sees what other processes committed
# (a search server sees rows an index run adds; a run that waited for the lock starts from the result).
ALWAYS_CURRENT = timedelta(0)


def storage_options_for(settings: Settings) -> dict[str, str] | None:
    """LanceDB storage options for the database Settings name: S3 settings for `s3://`, else none."""
    if not settings.db.startswith("s3://"):
        return None
    from mmindex.s3 import S3Config, lance_storage_options

    return lance_storage_options(S3Config.from_settings(settings))


def connect(
    db_uri: str, storage_options: dict[str, str] | None, *, consistency: timedelta | None = ALWAYS_CURRENT
) -> Any:
    """A LanceDB connection; ConfigError with one line when the database cannot be reached."""
    import lancedb

    try:
        return lancedb.connect(
            db_uri, storage_options=storage_options or None, read_consistency_interval=consistency
        )
    except (ValueError, OSError, RuntimeError) as exc:
        raise ConfigError(f"cannot open database {db_uri}: {explain_connect(exc)}") from exc


async def open_table_at(db_uri: str, storage_options: dict[str, str] | None, name: str, version: int) -> Any:
    """The named table as LanceDB's AsyncTable, checked out at `version` (it never moves from it)."""
    import lancedb

    connection = await lancedb.connect_async(db_uri, storage_options=storage_options or None)
    table = await connection.open_table(name)
    await table.checkout(version)
    return table


def open_table(connection: Any, db_uri: str, name: str) -> Any | None:
    """The named table, or None when it does not exist."""
    try:
        return connection.open_table(name)
    except ValueError as exc:
        if "not found" in str(exc) or "does not exist" in str(exc):
            return None
        raise StoreError(f"cannot open table {name} in {db_uri}: {short(exc)}") from exc
    except FileNotFoundError:
        return None


_S3_CODE = re.compile(r"<Code>(\w+)</Code>")
_S3_MEANING = {
    "NoSuchBucket": "the bucket does not exist",
    "InvalidAccessKeyId": "the access key is not valid",
    "SignatureDoesNotMatch": "the secret key does not match the access key",
    "AccessDenied": "access denied",
    "ExpiredToken": "the credentials have expired",
}


def explain_connect(exc: BaseException) -> str:
    """One line for a failed connect; for object stores, the S3 error code instead of a wall of XML."""
    match = _S3_CODE.search(str(exc))
    if match:
        return f"{_S3_MEANING.get(match.group(1), 'the object store refused')} ({match.group(1)})"
    if "Connect" in str(exc) or "Timeout" in str(exc):
        return "the object store endpoint cannot be reached"
    return short(exc)


def short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
