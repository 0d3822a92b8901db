"""A manifest object on S3 as a source, and caption manifests for S3 sources."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from mmindex.errors import FetchError, SourceError
from mmindex.ingest.sources.base import ScanFilter, ScanProblem, SourceItem
from mmindex.ingest.sources.manifest import (
    BadRow,
    caption_map,
    is_manifest_name,
    manifest_problem,
    read_manifest,
)
from mmindex.ingest.sources.s3.reader import S3ObjectReader
from mmindex.s3 import (
    S3Config,
    S3Objects,
    aware_utc,
    http_status,
    parse_s3_uri,
    strip_etag,
)

_Target = tuple[str, str, str, str | None]  # bucket, object key, row key, caption


class S3ManifestSource(S3ObjectReader):
    """The objects an S3 manifest (CSV/TSV/JSONL/Parquet) lists, with its captions. Relative paths are
    relative to the manifest's folder; `s3://` uris may point anywhere. Listing costs one GET of the
    manifest plus one HEAD per row (run `fetch_concurrency` at a time), and no GET of any image."""

    def __init__(
        self,
        location: str,
        *,
        path_column: str | None = None,
        caption_column: str | None = None,
        scan_filter: ScanFilter | None = None,
        config: S3Config | None = None,
    ) -> None:
        self.bucket, self.manifest_key = parse_s3_uri(location)
        if not is_manifest_name(self.manifest_key):
            raise SourceError(f"{location} is not a .csv/.tsv/.jsonl/.parquet manifest")
        self.manifest = location
        folder = posixpath.dirname(self.manifest_key)
        self.folder = folder + "/" if folder else ""
        self.root = f"s3://{self.bucket}/{self.folder}"
        self.path_column = path_column
        self.caption_column = caption_column
        self.scan_filter = scan_filter or ScanFilter()
        super().__init__(config)

    def describe(self) -> str:
        return f"S3 manifest {self.manifest} ({self.objects.describe_endpoint()})"

    def check(self) -> None:
        """Raise SourceError unless the manifest object exists and may be listed (one LIST request)."""
        found = self.objects.check_listing(self.bucket, self.manifest_key)
        if not found or found[0]["Key"] != self.manifest_key:
            raise SourceError(f"manifest {self.manifest} does not exist")

    def scan(self) -> Iterator[SourceItem | ScanProblem]:
        with self.objects.download(self.bucket, self.manifest_key, "manifest") as stream:
            rows = read_manifest(
                stream, self.manifest_key, path_column=self.path_column, caption_column=self.caption_column
            )
            targets = (
                manifest_problem(self.manifest, row) if isinstance(row, BadRow) else self._target(*row)
                for row in rows
            )
            kept = (t for t in targets if isinstance(t, ScanProblem) or self.scan_filter.keeps_key(t[2]))
            with ThreadPoolExecutor(self.fetch_concurrency, thread_name_prefix="mmindex-s3-head") as pool:
                for chunk in _chunks(kept, self.fetch_concurrency * 8):
                    for result in pool.map(self._stat, chunk):
                        if result is not None:
                            yield result

    def read_sidecar(self, item: SourceItem) -> bytes:
        raise FetchError("manifest items have no sidecar", retryable=False)

    def _target(self, path: str, caption: str | None) -> _Target | ScanProblem:
        """(bucket, object key, row key, caption) of a manifest row."""
        if path.startswith("s3://"):
            try:
                bucket, object_key = parse_s3_uri(path)
            except SourceError as exc:
                return ScanProblem(path, path, str(exc))
            key = path[len(self.root) :] if path.startswith(self.root) else path
            return bucket, object_key, key, caption
        object_key = posixpath.normpath(self.folder + path.lstrip("/"))
        if object_key.startswith("../") or object_key in ("..", "."):
            return ScanProblem(self.root + path, path, "the manifest path points outside the bucket")
        key = object_key[len(self.folder) :] if object_key.startswith(self.folder) else path
        return self.bucket, object_key, key, caption

    def _stat(self, target: _Target | ScanProblem) -> SourceItem | ScanProblem | None:
        if isinstance(target, ScanProblem):
            return target
        bucket, object_key, key, caption = target
        uri = f"s3://{bucket}/{object_key}"
        try:
            head = self.objects.head(bucket, object_key)
        except (ClientError, BotoCoreError) as exc:
            if http_status(exc) == 404:
                return ScanProblem(uri, key, "listed in the manifest but the object does not exist")
            return ScanProblem(uri, key, f"listed in the manifest but {self.objects.explain(exc, bucket)}")
        modified_at = aware_utc(head["LastModified"])
        if not self.scan_filter.keeps_time(modified_at):
            return None
        size, version = int(head["ContentLength"]), strip_etag(head["ETag"])
        return SourceItem(
            uri=uri, key=key, size=size, version=version, modified_at=modified_at, caption=caption
        )


def load_s3_caption_manifest(
    uri: str,
    source_root: str,
    *,
    path_column: str | None = None,
    caption_column: str | None = None,
    config: S3Config | None = None,
) -> dict[str, str]:
    """key -> caption for an S3 source rooted at `source_root` (`s3://bucket/prefix/`). The manifest is
    an `s3://` object or a local file; its paths are keys relative to the root, or full `s3://` uris."""
    if uri.startswith("s3://"):
        bucket, key = parse_s3_uri(uri)
        stream = S3Objects(config or S3Config()).download(bucket, key, "caption manifest")
    else:
        try:
            stream = open(os.path.expanduser(uri), "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise SourceError(f"cannot read caption manifest {uri}: {exc.strerror or exc}") from exc

    def key_of(path: str) -> str | None:
        if path.startswith("s3://"):
            return path[len(source_root) :] if path.startswith(source_root) else None
        return posixpath.normpath(path.lstrip("/"))

    with stream:
        return caption_map(
            read_manifest(stream, uri, path_column=path_column, caption_column=caption_column), key_of
        )


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
