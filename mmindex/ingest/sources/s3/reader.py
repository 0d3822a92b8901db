"""Reading indexed rows' objects by their `s3://` uri."""

from __future__ import annotations

from mmindex.errors import FetchError
from mmindex.ingest.sources.base import SourceItem
from mmindex.s3 import S3Config, S3Objects, parse_s3_uri


class S3ObjectReader:
    """Reads items by their `s3://` uri alone (rows already indexed, whatever source listed them)."""

    def __init__(self, config: S3Config | None = None) -> None:
        self.config = config or S3Config()
        self.objects = S3Objects(self.config)

    @property
    def fetch_concurrency(self) -> int:
        """How many concurrent `read()` calls pay off (the client's connection pool is sized for them)."""
        return self.config.fetch_concurrency

    def read(self, item: SourceItem) -> bytes:
        """The object's bytes; If-Match the item's version when it has one."""
        bucket, key = parse_s3_uri(item.uri)
        return self.objects.get(bucket, key, item.version or None)

    def read_sidecar(self, item: SourceItem) -> bytes:
        if item.sidecar is None:
            raise FetchError("the item has no caption sidecar", retryable=False)
        bucket, key = parse_s3_uri(item.sidecar)
        try:
            return self.objects.get(bucket, key, item.sidecar_version or None)
        except FetchError as exc:
            raise FetchError(f"caption sidecar: {exc}", retryable=exc.retryable) from exc
