"""Reading items by uri alone (local paths and s3:// objects), for work on rows already indexed."""

from __future__ import annotations

from typing import Any

from mmindex.config import Settings
from mmindex.errors import FetchError
from mmindex.ingest.sources.base import SourceItem
from mmindex.ingest.sources.local import read_file
from mmindex.ingest.sources.webdataset import is_tar_member_uri, read_member


class UriReader:
    """Reads any row's image by its uri; S3 objects through one client made on first use. An item's
    version (the ETag for objects) must still match, so a replaced object is not read as the old one."""

    fetch_concurrency = 8

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self._s3: Any = None

    def read(self, item: SourceItem) -> bytes:
        if is_tar_member_uri(item.uri, item.version):
            return read_member(item, self._s3_reader().objects if item.uri.startswith("s3://") else None)
        if item.uri.startswith("s3://"):
            data: bytes = self._s3_reader().read(item)
            return data
        return read_file(item.uri)

    def read_sidecar(self, item: SourceItem) -> bytes:
        raise FetchError("rows read by uri have no sidecar")

    def _s3_reader(self) -> Any:
        if self._s3 is None:
            from mmindex.ingest.sources.s3 import S3Config, S3ObjectReader

            self._s3 = S3ObjectReader(S3Config.from_settings(self.settings))
        return self._s3
