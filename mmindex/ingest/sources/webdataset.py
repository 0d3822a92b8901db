"""Webdataset tar shards as a source (what img2dataset and most large public image sets ship):
`KEY.jpg` with `KEY.txt` or `KEY.json` captions, the members of a sample side by side in `.tar` files,
in a local folder or under an `s3://` prefix.

Each sample's image becomes an item with the stable uri `TAR#KEY`; its version is the tar's version
(mtime or ETag) plus the image member's offset, so a changed tar is re-read and an item is read back
with one seek or one ranged GET. Captions are read while listing (they are inside the tar, next to
the image). A tar that breaks off is a listing problem (its later samples are missing: no pruning);
a corrupt image member is a decode failure row, like any corrupt file.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from mmindex.decode import IMAGE_EXTENSIONS
from mmindex.errors import FetchError, SourceError
from mmindex.ingest.sources.base import ScanFilter, ScanProblem, SourceItem
from mmindex.ingest.sources.sidecar import parse_sidecar

MEMBER = "#"  # TAR#KEY
CAPTION_MEMBERS = (".txt", ".json")  # preferred in this order
MAX_CAPTION_BYTES = 1 << 20
DETECT_ENTRIES = 1000  # entries looked at to tell a folder of shards from a folder of images


@dataclass
class _Sample:
    key: str
    image: tarfile.TarInfo | None = None
    captions: dict[str, bytes] = field(default_factory=dict)


def sample_key(name: str) -> tuple[str, str]:
    """(key, extension) of a member name, webdataset style: the key ends at the basename's first dot."""
    folder, base = posixpath.split(name)
    stem, dot, rest = base.partition(".")
    return posixpath.join(folder, stem), (dot + rest).lower()


def is_tar_member_uri(uri: str, version: str | None) -> bool:
    tar, sep, _ = uri.rpartition(MEMBER)
    return bool(sep) and tar.lower().endswith(".tar") and bool(version) and "@" in (version or "")


def member_location(item: SourceItem) -> tuple[str, str, int]:
    """(tar uri, tar version, byte offset of the image member) of a webdataset item."""
    tar = item.uri.rpartition(MEMBER)[0]
    tar_version, _, offset = item.version.rpartition("@")
    return tar, tar_version, int(offset)


def read_member(item: SourceItem, s3_objects: Any | None = None) -> bytes:
    """An image member's bytes: one seek in a local tar, one ranged GET (If-Match the tar's ETag) on S3."""
    tar, tar_version, offset = member_location(item)
    if tar.startswith("s3://"):
        from mmindex.s3 import parse_s3_uri

        if s3_objects is None:
            raise FetchError("no S3 client to read a tar member with", retryable=False)
        bucket, key = parse_s3_uri(tar)
        data: bytes = s3_objects.get(
            bucket, key, tar_version or None, byte_range=(offset, offset + item.size - 1)
        )
        return data
    try:
        if str(os.stat(tar).st_mtime_ns) != tar_version:
            raise FetchError("the tar changed since it was listed", retryable=True)
        with open(tar, "rb") as handle:
            handle.seek(offset)
            data = handle.read(item.size)
    except OSError as exc:
        raise FetchError(f"cannot read {tar}: {exc.strerror or exc}", retryable=True) from exc
    if len(data) != item.size:
        raise FetchError("the tar is shorter than when it was listed", retryable=True)
    return data


class WebDatasetSource:
    """Samples of the `.tar` shards under a folder or an `s3://bucket/prefix`, tar by tar in name order."""

    def __init__(self, location: str, *, scan_filter: ScanFilter | None = None, s3_config: Any | None = None):
        self.scan_filter = scan_filter or ScanFilter()
        self.location = location
        self._s3: Any = None
        if location.startswith("s3://"):
            from mmindex.ingest.sources.s3 import S3Config
            from mmindex.s3 import S3Objects, parse_s3_uri

            self.config = s3_config or S3Config()
            self._s3 = S3Objects(self.config)
            self.bucket, prefix = parse_s3_uri(location)
            self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
            self.root = f"s3://{self.bucket}/{self.prefix}"
        else:
            path = Path(location).expanduser().resolve()
            if not path.is_dir():
                raise SourceError(f"{location} is not a folder of webdataset .tar shards")
            self.root_path = path
            self.root = str(path) + os.sep

    @property
    def fetch_concurrency(self) -> int:
        return int(self.config.fetch_concurrency) if self._s3 is not None else 1

    def check(self) -> None:
        if self._s3 is not None:
            self._s3.check_listing(self.bucket, self.prefix)

    def describe(self) -> str:
        return f"webdataset {self.root}"

    def tars(self) -> Iterator[tuple[str, str, str, datetime | None]]:
        """(uri, name relative to the root, version, modified) of every tar, in name order."""
        if self._s3 is not None:
            for entry in self._s3.list_objects(self.bucket, self.prefix):
                if entry["Key"].lower().endswith(".tar"):
                    relative = entry["Key"][len(self.prefix) :]
                    etag = str(entry.get("ETag", "")).strip('"')
                    yield f"s3://{self.bucket}/{entry['Key']}", relative, etag, entry.get("LastModified")
            return
        found = sorted(p for p in self.root_path.rglob("*") if p.suffix.lower() == ".tar" and p.is_file())
        for path in found:
            stat = path.stat()
            modified = datetime.fromtimestamp(stat.st_mtime, UTC)
            yield str(path), path.relative_to(self.root_path).as_posix(), str(stat.st_mtime_ns), modified

    def scan(self) -> Iterator[SourceItem | ScanProblem]:
        for uri, relative, version, modified in self.tars():
            try:
                with self._open(uri) as stream:
                    yield from self._samples(stream, uri, relative, version, modified)
            except (tarfile.TarError, OSError, FetchError, SourceError, EOFError) as exc:
                yield ScanProblem(uri, relative, f"unreadable tar shard: {exc}", hides_items=True)

    def _open(self, uri: str) -> IO[bytes]:
        if self._s3 is None:
            return open(uri, "rb")  # noqa: SIM115 - the caller's with-block closes it
        key = uri[len(f"s3://{self.bucket}/") :]
        try:
            body: IO[bytes] = self._s3.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except Exception as exc:  # botocore's errors: the tar is a listing problem
            raise SourceError(self._s3.explain(exc, self.bucket)) from exc
        return body

    def _samples(
        self, stream: IO[bytes], uri: str, relative: str, version: str, modified: datetime | None
    ) -> Iterator[SourceItem]:
        current: _Sample | None = None
        with tarfile.open(fileobj=stream, mode="r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, extension = sample_key(member.name)
                if current is None or key != current.key:
                    if current is not None:
                        yield from self._item(current, uri, relative, version, modified)
                    current = _Sample(key)
                if extension in IMAGE_EXTENSIONS and current.image is None:
                    current.image = member
                elif extension in CAPTION_MEMBERS and member.size <= MAX_CAPTION_BYTES:
                    handle = archive.extractfile(member)
                    current.captions[extension] = handle.read() if handle is not None else b""
        if current is not None:
            yield from self._item(current, uri, relative, version, modified)

    def _item(
        self, sample: _Sample, uri: str, relative: str, version: str, modified: datetime | None
    ) -> Iterator[SourceItem]:
        if sample.image is None:
            return
        key = f"{relative}{MEMBER}{sample.key}"
        if not self.scan_filter.keeps_key(key) or not self.scan_filter.keeps_time(modified):
            return
        yield SourceItem(
            uri=f"{uri}{MEMBER}{sample.key}",
            key=key,
            size=sample.image.size,
            version=f"{version}@{sample.image.offset_data}",
            modified_at=modified,
            caption=_caption(sample),
        )

    def read(self, item: SourceItem) -> bytes:
        return read_member(item, self._s3)

    def read_sidecar(self, item: SourceItem) -> bytes:
        raise FetchError("webdataset captions are read with the listing", retryable=False)


def _caption(sample: _Sample) -> str | None:
    for extension in CAPTION_MEMBERS:
        if extension in sample.captions:
            try:
                caption = parse_sidecar(sample.captions[extension], "caption" + extension).caption
            except Exception:  # pathological JSON: the sample is indexed without a caption
                caption = None
            if caption:
                return caption
    return None


def looks_like_webdataset(names: Iterator[str]) -> bool:
    """True when the first entries of a listing are .tar files and no images (auto-detection)."""
    tars = images = 0
    for count, name in enumerate(names):
        if count >= DETECT_ENTRIES:
            break
        extension = os.path.splitext(name)[1].lower()
        tars += extension == ".tar"
        images += extension in IMAGE_EXTENSIONS
    return tars > 0 and images == 0
