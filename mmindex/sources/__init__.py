"""Sources yield the items to index: local directories, manifests and (see s3.py) object storage."""

from __future__ import annotations

from pathlib import Path

from mmindex.sources.base import ScanFilter, ScanProblem, Source, SourceItem, item_id
from mmindex.sources.local import LocalManifestSource, LocalSource, load_caption_manifest
from mmindex.sources.manifest import is_manifest_name

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
) -> Source:
    """The source a location names: a directory, or a .csv/.jsonl/.parquet manifest that lists images.

    `captions` names a manifest whose captions apply to a directory's images (by path relative to it).
    Raises SourceError (a ConfigError) when the location cannot be used at all.
    """
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
