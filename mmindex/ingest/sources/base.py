"""What every source yields: items to index, and problems met while listing them."""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

NOT_UTF8 = "the name is not valid UTF-8 (Latin-1 from an old archive?); rename it to index it"


def is_utf8(text: str) -> bool:
    """False for strings holding lone surrogates (undecodable bytes in a file name, as os.scandir keeps
    them), which Arrow, and so the tables, cannot store."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(text: str) -> str:
    """A storable rendering of a string that may hold undecodable bytes (shown as \\xNN)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def item_id(uri: str) -> str:
    """The stable row id of a uri: 128 bits of BLAKE2b, as 32 hex digits."""
    return hashlib.blake2b(uri.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class SourceItem:
    """One image as listed: where it is and what version it is, without its bytes.

    `caption` is a caption known at listing time (from a manifest); `sidecar` names a caption file or
    object read only if the item needs (re)indexing, so an unchanged corpus costs a listing and nothing
    more. Everything that can change what the index holds for the item feeds `fingerprint`.
    """

    uri: str
    key: str
    size: int
    version: str
    modified_at: datetime | None = None
    caption: str | None = None
    sidecar: str | None = None
    sidecar_version: str | None = None
    id: str = field(init=False)
    fingerprint: int = field(init=False)  # a signed 64-bit digest of version, size and caption origin

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", item_id(self.uri))
        object.__setattr__(self, "fingerprint", self._fingerprint())

    def _fingerprint(self) -> int:
        parts = (self.version, str(self.size), self.sidecar or "", self.sidecar_version or "")
        digest = hashlib.blake2b(digest_size=8)
        for part in parts:
            digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
        if self.caption is not None:
            digest.update(b"\1" + self.caption.encode("utf-8", "surrogatepass"))
        return int.from_bytes(digest.digest(), "little", signed=True)


@dataclass(frozen=True, slots=True)
class ScanProblem:
    """Something the listing could not read (a directory, a broken link, a manifest row). `hides_items`
    is True when images may be missing from the listing because of it (an unreadable directory): then
    absence proves nothing, and pruning must not run."""

    uri: str
    key: str
    error: str
    hides_items: bool = False

    @property
    def id(self) -> str:
        return item_id(self.uri)


class Source(Protocol):
    """A place images come from. `root` is the uri prefix every item's uri starts with."""

    root: str

    @property
    def fetch_concurrency(self) -> int:
        """How many concurrent read() calls pay off (1 for local disks, more for object stores)."""
        ...

    def check(self) -> None:
        """Raise SourceError now if the source cannot be listed (wrong bucket, denied credentials)."""
        ...

    def scan(self) -> Iterator[SourceItem | ScanProblem]:
        """Yield every image once, in a stable order, streaming (never the whole listing in memory)."""
        ...

    def read(self, item: SourceItem) -> bytes:
        """The image's bytes. Raises FetchError."""
        ...

    def read_sidecar(self, item: SourceItem) -> bytes:
        """The caption sidecar's bytes. Raises FetchError."""
        ...

    def describe(self) -> str:
        """A one-line, credential-free description for logs and reports."""
        ...


@dataclass(frozen=True)
class ScanFilter:
    """Which listed items to keep: glob patterns on the key, a key prefix and a modification window."""

    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    prefix: str = ""
    since: datetime | None = None
    until: datetime | None = None

    @property
    def is_partial(self) -> bool:
        """True when the filter can leave out items that exist, which makes pruning unsafe."""
        return bool(self.include or self.exclude or self.prefix or self.since or self.until)

    def keeps_key(self, key: str) -> bool:
        if self.prefix and not key.startswith(self.prefix):
            return False
        if self.include and not any(fnmatch.fnmatchcase(key, pattern) for pattern in self.include):
            return False
        return not any(fnmatch.fnmatchcase(key, pattern) for pattern in self.exclude)

    def keeps_time(self, modified_at: datetime | None) -> bool:
        if modified_at is None:
            return self.since is None and self.until is None
        if self.since is not None and modified_at < self.since:
            return False
        return self.until is None or modified_at < self.until
