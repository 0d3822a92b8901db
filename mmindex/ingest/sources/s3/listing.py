"""Listing an S3 prefix: images in key order, caption sidecars paired on the way (no GETs)."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from mmindex.decode import IMAGE_EXTENSIONS
from mmindex.errors import SourceError
from mmindex.ingest.sources.base import ScanFilter, ScanProblem, SourceItem
from mmindex.ingest.sources.s3.reader import S3ObjectReader
from mmindex.ingest.sources.sidecar import SIDECAR_SUFFIXES, sidecar_names
from mmindex.s3 import (
    LIST_PAGE_SIZE,
    S3Config,
    aware_utc,
    parse_s3_uri,
    strip_etag,
)


class S3Source(S3ObjectReader):
    """Images under `s3://bucket/prefix/`; captions from sidecars and, optionally, a caption manifest."""

    page_size = LIST_PAGE_SIZE

    def __init__(
        self,
        location: str,
        *,
        scan_filter: ScanFilter | None = None,
        captions: dict[str, str] | None = None,
        config: S3Config | None = None,
    ) -> None:
        self.bucket, prefix = parse_s3_uri(location)
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        self.root = f"s3://{self.bucket}/{self.prefix}"
        self.scan_filter = scan_filter or ScanFilter()
        self.captions = captions or {}
        super().__init__(config)

    def describe(self) -> str:
        return f"S3 prefix {self.root} ({self.objects.describe_endpoint()})"

    def check(self) -> None:
        """Raise SourceError unless the bucket exists, the credentials may list it and the prefix holds
        objects. One LIST request with short timeouts: seconds, even against a dead endpoint."""
        if not self.objects.check_listing(self.bucket, self.prefix):
            if self.prefix:
                raise SourceError(f"no objects under {self.root}; check the prefix {self.prefix!r}")
            raise SourceError(f"bucket {self.bucket!r} is empty")

    def scan(self) -> Iterator[SourceItem | ScanProblem]:
        listing_prefix = self.prefix + sidecar_safe_prefix(self.scan_filter.prefix)
        pairer = SidecarPairer()
        for entry in self.objects.list_objects(self.bucket, listing_prefix, self.page_size):
            key = entry["Key"][len(self.prefix) :]
            for image, sidecar in pairer.advance(key):
                yield self._item(image, sidecar)
            kind = _kind(key)
            if kind == "sidecar":
                pairer.add_sidecar(key, _etag(entry))
            elif kind == "image" and self._keeps(key, entry):
                pairer.add_image(key, entry)
        for image, sidecar in pairer.finish():
            yield self._item(image, sidecar)

    def _keeps(self, key: str, entry: dict[str, Any]) -> bool:
        return self.scan_filter.keeps_key(key) and self.scan_filter.keeps_time(_modified_at(entry))

    def _item(self, entry: dict[str, Any], sidecar: tuple[str, str] | None) -> SourceItem:
        key = entry["Key"][len(self.prefix) :]
        return SourceItem(
            uri=f"s3://{self.bucket}/{entry['Key']}",
            key=key,
            size=int(entry["Size"]),
            version=_etag(entry),
            modified_at=_modified_at(entry),
            caption=self.captions.get(key),
            sidecar=self.root + sidecar[0] if sidecar else None,
            sidecar_version=sidecar[1] if sidecar else None,
        )


def sidecar_safe_prefix(prefix: str) -> str:
    """The listing prefix that still lists every sidecar of every image under `prefix`: cut just after
    the first "." of the last path component (`a/photo.jp` -> `a/photo.`), since sidecars share it."""
    directory, slash, name = prefix.rpartition("/")
    dot = name.find(".")
    return prefix if dot < 0 else directory + slash + name[: dot + 1]


class SidecarPairer:
    """Pairs images with their caption sidecars in one pass over keys in lexicographic order.

    Every sidecar candidate of `d/photo.jpg` starts with `d/photo.` (the image's block), and keys with
    a common prefix are listed contiguously, so the first key outside the block settles the pairing.
    Held meanwhile: images whose block is open, and sidecars an open or future image may claim; that
    is bounded by the size of a block, not of the listing. Images come out when their block closes.
    """

    def __init__(self) -> None:
        self._images: list[tuple[str, str, dict[str, Any]]] = []  # (block, key, listing entry)
        self._sidecars: dict[str, str] = {}  # key -> ETag

    def add_image(self, key: str, entry: dict[str, Any]) -> None:
        self._images.append((_stem(key) + ".", key, entry))

    def add_sidecar(self, key: str, etag: str) -> None:
        self._sidecars[key] = etag

    def advance(self, key: str) -> list[tuple[dict[str, Any], tuple[str, str] | None]]:
        """Settle the images whose block ends before `key` (the next key of the listing)."""
        done = []
        if self._images and not all(key.startswith(block) for block, _, _ in self._images):
            still_open = []
            for block, image_key, entry in self._images:
                if key.startswith(block):
                    still_open.append((block, image_key, entry))
                else:
                    done.append((entry, self._sidecar_of(image_key)))
            self._images = still_open
        if self._sidecars:
            self._forget_sidecars(key)
        return done

    def finish(self) -> list[tuple[dict[str, Any], tuple[str, str] | None]]:
        done = [(entry, self._sidecar_of(image_key)) for _, image_key, entry in self._images]
        self._images, self._sidecars = [], {}
        return done

    def _sidecar_of(self, image_key: str) -> tuple[str, str] | None:
        directory, slash, name = image_key.rpartition("/")
        for candidate in sidecar_names(name):
            sidecar_key = directory + slash + candidate
            if sidecar_key in self._sidecars:
                return sidecar_key, self._sidecars[sidecar_key]
        return None

    def _forget_sidecars(self, key: str) -> None:
        # A sidecar s = "stem.txt" serves images "stem.<ext>" (all inside block "stem.") and the image
        # named "stem" itself (listed before s, so held in _images if still unsettled).
        open_images = {image_key for _, image_key, _ in self._images}
        for sidecar_key in list(self._sidecars):
            stem = _stem(sidecar_key)
            if not key.startswith(stem + ".") and stem not in open_images:
                del self._sidecars[sidecar_key]


def _kind(key: str) -> str | None:
    """ "image", "sidecar" or None (hidden, a folder marker, or another kind of object)."""
    if not key or key.endswith("/") or any(part.startswith(".") for part in key.split("/")):
        return None
    extension = posixpath.splitext(key)[1]
    if extension.lower() in IMAGE_EXTENSIONS:
        return "image"
    return "sidecar" if extension in SIDECAR_SUFFIXES else None


def _stem(key: str) -> str:
    """The key without the extension of its last component (`d/a.b.jpg` -> `d/a.b`)."""
    return posixpath.splitext(key)[0]


def _etag(entry: dict[str, Any]) -> str:
    return strip_etag(str(entry.get("ETag", "")))


def _modified_at(entry: dict[str, Any]) -> datetime | None:
    value = entry.get("LastModified")
    return aware_utc(value) if isinstance(value, datetime) else None
