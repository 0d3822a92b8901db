"""One writer per table where no file lock can reach (a database on object storage, written from
several machines): a Prefect global concurrency limit of 1 per table, held while a run writes.

mmindex's store finds `write_slot` through the `mmindex.write_slots` entry point and takes it for
every writer of a database on object storage, in flows and in notebooks alike, whenever a Prefect API
is configured (PREFECT_API_URL) or the writer runs inside a flow run.

Slots are leases that the holder renews; a crashed holder's slot frees itself when its lease runs out
(about 75 s with the 60 s lease used here). The second run waits (up to `timeout`), or is refused with
a one-line TableBusy error. Local databases are guarded by flock instead (mmindex.store.lock), which a
dead holder releases at once, so no slot is taken for them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager

import httpx
from prefect import get_client, get_run_logger
from prefect.concurrency._asyncio import AcquireConcurrencySlotTimeoutError
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.exceptions import MissingContextError, ObjectAlreadyExists
from prefect.settings import PREFECT_API_URL

from mmindex.errors import StoreError
from mmindex.store.lock import TableBusy, lock_path

LEASE_SECONDS = 60.0


def slot_name(db: str, table: str) -> str:
    """A stable concurrency-limit name for a table (absolute path for local databases)."""
    location = db if "://" in db else os.path.abspath(os.path.expanduser(db))
    return "mmindex-write-" + hashlib.blake2b(f"{location}#{table}".encode(), digest_size=8).hexdigest()


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:  # used outside a flow run (tests, scripts)
        return logging.getLogger(__name__)


@contextmanager
def table_slot(db: str, table: str, timeout: float | None = None) -> Iterator[None]:
    """Hold the table's write slot for the enclosed block (databases on object storage only)."""
    if lock_path(db, table) is not None:
        yield  # a local database: the run's flock does the job, and frees itself when a holder dies
        return
    name = slot_name(db, table)
    held = ExitStack()
    try:
        with get_client(sync_client=True) as client:
            try:
                client.upsert_global_concurrency_limit_by_name(name, 1)
            except ObjectAlreadyExists:  # another run created it a moment ago
                pass
        _logger().info("taking write slot %s for table %r in %s", name, table, db)
        held.enter_context(
            concurrency(name, occupy=1, timeout_seconds=timeout, lease_duration=LEASE_SECONDS, strict=True)
        )
    except AcquireConcurrencySlotTimeoutError:
        raise TableBusy(
            f"table {table!r} in {db} is being written by another flow run; gave up after {timeout:g} s"
        ) from None
    except httpx.HTTPError as exc:
        raise StoreError(
            f"cannot take the write slot of table {table!r} from the Prefect API ({type(exc).__name__}: "
            f"{exc}); check PREFECT_API_URL"
        ) from exc
    with held:
        yield


def write_slot(db: str, table: str, timeout: float | None = None) -> AbstractContextManager[None] | None:
    """The table's slot when a Prefect API can hold it (configured in the environment or the active
    Prefect profile, or this is a flow run); else None."""
    if not (PREFECT_API_URL.value() or FlowRunContext.get() is not None):
        return None
    return table_slot(db, table, timeout)
