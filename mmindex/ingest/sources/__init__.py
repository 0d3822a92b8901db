"""Sources yield the items to index: local directories, manifests and (see s3.py) object storage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmindex.errors import SourceError
from mmindex.ingest.sources.base import ScanFilter, ScanProblem, Source, SourceItem, item_id
from mmindex.ingest.sources.local import LocalManifestSource, LocalSource, load_caption_manifest
from mmindex.ingest.sources.manifest import is_manifest_name
from mmindex.ingest.sources.webdataset import DETECT_ENTRIES, WebDatasetSource, looks_like_webdataset

FORMATS = ("auto", "files", "webdataset")

__all__ = [
    "LocalManifestSource",
    "LocalSource",
    "ScanFilter",
    "ScanProblem",
    "Source",
    "SourceItem",
    "item_id",
    "open_source",
]


def open_source(
    location: str,
    *,
    captions: str | None = None,
    path_column: str | None = None,
    caption_column: str | None = None,
    scan_filter: ScanFilter | None = None,
    s3_config: Any | None = None,
    format: str = "auto",
) -> Source:
    """The source a location names: a directory, an `s3://bucket/prefix`, or a .csv/.jsonl/.parquet
    manifest (local or on S3) that lists images. `format` "webdataset" reads the location's .tar
    shards; "auto" (the default) does so when the location holds .tar files and no images.

    `captions` names a manifest whose captions apply to a directory's or prefix's images (by path
    relative to it). `s3_config` (an S3Config) says how to reach S3. Raises SourceError (a
    ConfigError) when the location cannot be used at all; call `source.check()` to also verify that
    a bucket and its credentials work before any heavy work starts.
    """
    if format not in FORMATS:
        raise SourceError(f"--format {format!r} is not one of {', '.join(FORMATS)}")
    if format == "webdataset" or (format == "auto" and _holds_only_tars(location, s3_config)):
        if captions is not None:
            raise SourceError("--captions does not apply to webdataset shards: their captions are inside")
        return WebDatasetSource(location, scan_filter=scan_filter, s3_config=s3_config)
    if location.startswith("s3://"):
        return _open_s3(location, captions, path_column, caption_column, scan_filter, s3_config)
    path = Path(location).expanduser()
    if is_manifest_name(path.name) and not path.is_dir():
        return LocalManifestSource(
            path, path_column=path_column, caption_column=caption_column, scan_filter=scan_filter
        )
    source = LocalSource(path, scan_filter=scan_filter)
    if captions is not None:
        source.captions = load_caption_manifest(
            captions, source.root_path, path_column=path_column, caption_column=caption_column
        )
    return source


def _open_s3(
    location: str,
    captions: str | None,
    path_column: str | None,
    caption_column: str | None,
    scan_filter: ScanFilter | None,
    s3_config: Any | None,
) -> Source:
    from mmindex.ingest.sources.s3 import (  # boto3 only if needed
        S3ManifestSource,
        S3Source,
        load_s3_caption_manifest,
    )

    if is_manifest_name(location):
        return S3ManifestSource(
            location,
            path_column=path_column,
            caption_column=caption_column,
            scan_filter=scan_filter,
            config=s3_config,
        )
    source = S3Source(location, scan_filter=scan_filter, config=s3_config)
    if captions is not None:
        source.captions = load_s3_caption_manifest(
            captions, source.root, path_column=path_column, caption_column=caption_column, config=s3_config
        )
    return source


def _holds_only_tars(location: str, s3_config: Any | None) -> bool:
    """Auto-detection: the first entries under `location` are .tar files and none is an image."""
    if is_manifest_name(location):
        return False
    if location.startswith("s3://"):
        from mmindex.s3 import S3Config, S3Objects, parse_s3_uri

        bucket, prefix = parse_s3_uri(location)
        prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        try:
            # one short LIST with the check's timeouts: a dead endpoint costs seconds, then check() says why
            objects = S3Objects(s3_config or S3Config())
            entries = objects.check_listing(bucket, prefix, max_keys=DETECT_ENTRIES)
            return looks_like_webdataset(entry["Key"] for entry in entries)
        except SourceError:
            return False  # the source's own check says what is wrong
    path = Path(location).expanduser()
    if not path.is_dir():
        return False
    return looks_like_webdataset(str(p) for p in path.rglob("*"))
