"""How `mmindex search` finds a running `mmindex serve` for its table, and so answers in a fraction of
a second instead of loading torch and the model.

While it runs, `mmindex serve` keeps `<db>/.<table>.mmindex-serve.json` (readable by its owner only):
its URL, pid, database, table and token. `mmindex search` uses that server when the file is there,
its process is alive, and the server answers `/api/table` for the same database and table within
half a second; otherwise it searches in its own process. A file whose process is gone is removed.
Databases on object storage have no such file (their servers are named with `--server`).

Standard library only: this runs before the search decides whether to import torch.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from mmindex.store.lock import lock_path

PROBE_TIMEOUT_S = 0.5


@dataclass(frozen=True)
class Announcement:
    url: str
    pid: int
    db: str
    table: str
    token: str | None = None


def announcement_path(db_uri: str, table: str) -> Path | None:
    """Where a server of this table announces itself, or None for a database on object storage."""
    lock = lock_path(db_uri, table)
    return None if lock is None else lock.with_name(f".{table}.mmindex-serve.json")


def local_url(host: str, port: int) -> str:
    """The URL a process on this machine reaches a server bound to `host` at."""
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


@contextlib.contextmanager
def announced(announcement: Announcement) -> Iterator[Path | None]:
    """Keep the announcement file while the block runs (a server that cannot write it still serves)."""
    path = announcement_path(announcement.db, announcement.table)
    written = False
    if path is not None:
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as file:
                json.dump(asdict(announcement), file)
            written = True
        except OSError:
            pass
    try:
        yield path if written else None
    finally:
        if written and path is not None and _owner_pid(path) == announcement.pid:
            with contextlib.suppress(OSError):
                path.unlink()


def find_server(db_uri: str, table: str) -> Announcement | None:
    """The running server announced for this database and table, if it answers for them now."""
    path = announcement_path(db_uri, table)
    if path is None or not path.is_file():
        return None
    try:
        found = Announcement(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if not _alive(found.pid):
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    headers = {"Authorization": f"Bearer {found.token}"} if found.token else {}
    request = urllib.request.Request(f"{found.url}/api/table", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as response:
            serving = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    same_db = _same_path(str(serving.get("db", "")), db_uri)
    return found if same_db and serving.get("table") == table else None


def _owner_pid(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _same_path(a: str, b: str) -> bool:
    def resolved(uri: str) -> Path:
        return Path(uri.removeprefix("file://")).expanduser().resolve()

    return resolved(a) == resolved(b)
