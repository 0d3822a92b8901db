"""One writer per table across processes: an advisory file lock beside a local table.

The lock is `flock` on `<db>/.<table>.mmindex-lock`: the kernel releases it the moment its holder
dies, so a crashed or SIGKILLed run never leaves it stuck. The file also records who holds it, for
the message a waiting run prints. Databases on object storage cannot be flock-ed; there `write_guard`
takes an orchestrator's slot per table instead (the Prefect one lives in flows/locking.py).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from mmindex.errors import TableError

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5


class TableBusy(TableError):
    """Another run holds the table's write lock and the wait ran out."""


class TableLock:
    """Exclusive write access to one table, held for a whole run. Re-entrant within one object."""

    def __init__(self, path: Path | None, table: str, *, timeout: float | None = None,
                 on_wait: Callable[[str], None] | None = None) -> None:  # fmt: skip
        self.path = path
        self.table = table
        self.timeout = timeout
        self.on_wait = on_wait or log.warning
        self._handle: Any = None
        self._depth = 0

    @property
    def enforced(self) -> bool:
        return self.path is not None

    def __enter__(self) -> TableLock:
        if self._depth == 0 and self.path is not None:
            self._acquire(self.path)
        self._depth += 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._depth -= 1
        if self._depth == 0 and self._handle is not None:
            import fcntl

            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def _acquire(self, path: Path) -> None:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")  # noqa: SIM115 - held until __exit__
        started = time.monotonic()
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = _read_holder(path)
                waited = time.monotonic() - started
                if self.timeout is not None and waited >= self.timeout:
                    handle.close()
                    raise TableBusy(
                        f"table {self.table!r} is being written by another run ({holder}); gave up after "
                        f"{waited:.0f} s; rerun later or raise --lock-timeout"
                    ) from None
                if not told:
                    self.on_wait(f"table {self.table!r} is being written by another run ({holder}); waiting")
                    told = True
                time.sleep(POLL_SECONDS)
        handle.seek(0)
        handle.truncate()
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now(UTC).isoformat()}
        handle.write(json.dumps(me))
        handle.flush()
        self._handle = handle


def _read_holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text() or "{}")
        return f"pid {holder['pid']} on {holder['host']} since {holder['since'][:19]}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"


def lock_path(db_uri: str, table: str) -> Path | None:
    """Where a table's lock file lives, or None for a database on object storage."""
    if "://" in db_uri and not db_uri.startswith("file://"):
        return None
    root = Path(db_uri.removeprefix("file://")).expanduser()
    return root / f".{table}.mmindex-lock"


SLOT_PLUGINS = "mmindex.write_slots"  # entry-point group: where the Prefect table slot comes from


@contextmanager
def write_guard(db_uri: str, table: str, timeout: float | None = None) -> Iterator[str]:
    """Hold the only right to write `table` for the enclosed block; yields how it is guarded.

    A local database: flock (see TableLock). A database on object storage: no file can be locked, so
    the write slot of an orchestrator (the Prefect global concurrency slot of mmindex.flows, found by
    entry point) is taken when a Prefect API is configured or the caller runs inside a flow; else the
    block runs unguarded and says so, since two concurrent writers could then duplicate rows.
    """
    path = lock_path(db_uri, table)
    if path is not None:
        with TableLock(path, table, timeout=timeout):
            yield "file lock"
        return
    slot = _orchestrator_slot(db_uri, table, timeout)
    if slot is None:
        log.warning(
            "table %r in %s is written without a write slot (no Prefect API configured): run one writer "
            "at a time, or set PREFECT_API_URL so that runs take turns",
            table,
            db_uri,
        )
        yield "unguarded"
        return
    with slot:
        yield "orchestrator slot"


def _orchestrator_slot(db_uri: str, table: str, timeout: float | None) -> AbstractContextManager[None] | None:
    if not prefect_configured():
        return None  # Prefect is neither configured nor in use: do not import it just to find out
    providers = list(entry_points(group=SLOT_PLUGINS))
    if not providers:
        log.warning("no write-slot provider is registered (%s); reinstall mmindex", SLOT_PLUGINS)
    for entry in providers:
        provider: Callable[[str, str, float | None], AbstractContextManager[None] | None] = entry.load()
        slot = provider(db_uri, table, timeout)
        if slot is not None:
            return slot
    return None


def prefect_configured() -> bool:
    """Whether a Prefect API may be configured: PREFECT_API_URL in the environment or in the active
    profile of PREFECT_HOME/profiles.toml (what `prefect cloud login` writes), or Prefect in use."""
    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
        return True
    home = Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()
    try:
        import tomllib

        profiles = tomllib.loads((home / "profiles.toml").read_text())
    except (ImportError, OSError, ValueError):
        return False
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active") or "ephemeral"
    settings = profiles.get("profiles", {}).get(active, {})
    return isinstance(settings, dict) and bool(settings.get("PREFECT_API_URL"))
