"""Objects under an S3 prefix (AWS or any S3-compatible endpoint), or the objects an S3 manifest lists.

A row's uri is `s3://bucket/key`, its key the object key relative to the source prefix, its version
the ETag. Listing streams `list_objects_v2` page by page and pairs caption sidecars on the way: S3
lists keys in lexicographic order, so every sidecar of `dir/photo.jpg` (`dir/photo.txt`,
`dir/photo.jpg.json`, ...) lies in the contiguous block of keys that start with `dir/photo.`; an
image waits only until its block ends. Nothing is fetched while listing: sidecars and images are read
(GET) only for items that need (re)indexing.

Faults: botocore retries requests (standard mode: 5xx, SlowDown, dropped connections, timeouts);
errors while streaming a body are not botocore's business, so `read` retries those itself. An object
that still fails raises FetchError (a failures row). A listing that fails after retries raises
SourceError: a listing with a hole could make a pruning run delete rows that still exist.
Credentials never appear in messages, `describe()` or logs.
"""

from __future__ import annotations

from mmindex.ingest.sources.s3.listing import S3Source
from mmindex.ingest.sources.s3.manifest import S3ManifestSource, load_s3_caption_manifest
from mmindex.ingest.sources.s3.reader import S3ObjectReader
from mmindex.s3 import S3Config, lance_storage_options, parse_s3_uri

__all__ = [
    "S3Config",
    "S3ManifestSource",
    "S3ObjectReader",
    "S3Source",
    "lance_storage_options",
    "load_s3_caption_manifest",
    "parse_s3_uri",
]
