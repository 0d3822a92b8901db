"""Local files: a directory walked recursively, or a manifest file that lists images.

The walk is depth-first in sorted order, skips hidden files and folders, follows symbolic links to
folders once (a link loop, or a second path to a folder already seen, is not walked again), and finds
images by extension or, for files without one, by their first bytes. A row's uri is the absolute
path, its key the path relative to the root with `/` separators.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlparse

from mmindex.decode import IMAGE_EXTENSIONS, SNIFF_BYTES, sniff_format
from mmindex.errors import FetchError, SourceError
from mmindex.ingest.sources.base import NOT_UTF8, ScanFilter, ScanProblem, SourceItem, is_utf8, printable
from mmindex.ingest.sources.manifest import (
    BadRow,
    caption_map,
    manifest_problem,
    open_local_manifest,
    read_manifest,
)
from mmindex.ingest.sources.sidecar import sidecar_names


class LocalSource:
    """Images under a local directory; captions from sidecars and, optionally, a caption manifest."""

    fetch_concurrency = 1

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        captions: dict[str, str] | None = None,
        scan_filter: ScanFilter | None = None,
    ) -> None:
        path = Path(root).expanduser()
        if not path.exists():
            raise SourceError(f"source directory {path} does not exist")
        if not path.is_dir():
            raise SourceError(f"source {path} is not a directory (or a .csv/.jsonl/.parquet manifest)")
        self.root_path = path.resolve()
        self.root = _dir_prefix(self.root_path)
        self.captions = captions or {}
        self.scan_filter = scan_filter or ScanFilter()

    def describe(self) -> str:
        return f"directory {self.root_path}"

    def check(self) -> None:
        """Nothing to check beyond what the constructor did (the directory exists)."""

    def scan(self) -> Iterator[SourceItem | ScanProblem]:
        visited: set[tuple[int, int]] = set()
        stack: list[tuple[Path, str]] = [(self.root_path, "")]
        while stack:
            directory, rel = stack.pop()
            try:
                stat = directory.stat()
                if (stat.st_dev, stat.st_ino) in visited:
                    continue
                visited.add((stat.st_dev, stat.st_ino))
                with os.scandir(directory) as listing:
                    entries = sorted(listing, key=lambda entry: entry.name)
            except OSError as exc:
                yield ScanProblem(
                    str(directory), rel, f"cannot list directory: {exc.strerror or exc}", hides_items=True
                )
                continue
            names = {entry.name for entry in entries}
            subdirectories: list[tuple[Path, str]] = []
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                key = rel + entry.name
                if not is_utf8(entry.name):
                    if entry.is_dir() or _has_image_extension(entry.name):
                        yield ScanProblem(printable(entry.path), printable(key), NOT_UTF8)
                    continue
                try:
                    if entry.is_dir():
                        if self._may_contain(key + "/"):
                            subdirectories.append((Path(entry.path), key + "/"))
                        continue
                    found = self._item(entry, key, names)
                except (OSError, ValueError, OverflowError) as exc:  # e.g. an mtime out of datetime's range
                    found = ScanProblem(
                        entry.path, key, f"cannot read: {getattr(exc, 'strerror', None) or exc}"
                    )
                if found is not None:
                    yield found
            stack.extend(reversed(subdirectories))

    def read(self, item: SourceItem) -> bytes:
        return read_file(item.uri)

    def read_sidecar(self, item: SourceItem) -> bytes:
        assert item.sidecar is not None
        return read_file(item.sidecar)

    def _may_contain(self, directory_key: str) -> bool:
        prefix = self.scan_filter.prefix
        return not prefix or directory_key.startswith(prefix) or prefix.startswith(directory_key)

    def _item(self, entry: os.DirEntry[str], key: str, names: set[str]) -> SourceItem | ScanProblem | None:
        if not entry.is_file():
            if entry.is_symlink() and _has_image_extension(entry.name):
                return ScanProblem(entry.path, key, "broken symbolic link")
            return None
        if not _has_image_extension(entry.name) and not _is_extensionless_image(entry):
            return None
        if not self.scan_filter.keeps_key(key):
            return None
        stat = entry.stat()
        modified_at = datetime.fromtimestamp(stat.st_mtime_ns / 1e9, tz=UTC)
        if not self.scan_filter.keeps_time(modified_at):
            return None
        sidecar, sidecar_version = _find_sidecar(entry, names)
        return SourceItem(
            uri=self.root + key,
            key=key,
            size=stat.st_size,
            version=str(stat.st_mtime_ns),
            modified_at=modified_at,
            caption=self.captions.get(key),
            sidecar=sidecar,
            sidecar_version=sidecar_version,
        )


class LocalManifestSource:
    """The images a local manifest lists; relative paths are relative to the manifest's folder."""

    fetch_concurrency = 1

    def __init__(
        self,
        manifest: str | os.PathLike[str],
        *,
        path_column: str | None = None,
        caption_column: str | None = None,
        scan_filter: ScanFilter | None = None,
    ) -> None:
        self.manifest = Path(manifest).expanduser().resolve()
        if not self.manifest.is_file():
            raise SourceError(f"manifest {self.manifest} does not exist")
        self.root_path = self.manifest.parent
        self.root = _dir_prefix(self.root_path)
        self.path_column = path_column
        self.caption_column = caption_column
        self.scan_filter = scan_filter or ScanFilter()
        with open_local_manifest(self.manifest) as stream:  # fail now on a bad header, not mid-run
            next(
                iter(
                    read_manifest(
                        stream, self.manifest.name, path_column=path_column, caption_column=caption_column
                    )
                ),
                None,
            )

    def describe(self) -> str:
        return f"manifest {self.manifest}"

    def check(self) -> None:
        """The constructor already read the manifest's header."""

    def scan(self) -> Iterator[SourceItem | ScanProblem]:
        with open_local_manifest(self.manifest) as stream:
            rows = read_manifest(
                stream, self.manifest.name, path_column=self.path_column, caption_column=self.caption_column
            )
            for row in rows:
                if isinstance(row, BadRow):
                    yield manifest_problem(str(self.manifest), row)
                    continue
                path_text, caption = row
                path = self.root_path / local_path(path_text)
                key = manifest_key(path_text, self.root_path)
                if not self.scan_filter.keeps_key(key):
                    continue
                try:
                    stat = path.stat()
                except OSError as exc:
                    yield ScanProblem(str(path), key, f"listed in the manifest but {exc.strerror or exc}")
                    continue
                modified_at = datetime.fromtimestamp(stat.st_mtime_ns / 1e9, tz=UTC)
                if not self.scan_filter.keeps_time(modified_at):
                    continue
                yield SourceItem(
                    uri=str(path.absolute()),
                    key=key,
                    size=stat.st_size,
                    version=str(stat.st_mtime_ns),
                    modified_at=modified_at,
                    caption=caption,
                )

    def read(self, item: SourceItem) -> bytes:
        return read_file(item.uri)

    def read_sidecar(self, item: SourceItem) -> bytes:
        raise FetchError("manifest items have no sidecar")


def load_caption_manifest(
    manifest: str | os.PathLike[str],
    root: Path,
    *,
    path_column: str | None = None,
    caption_column: str | None = None,
) -> dict[str, str]:
    """key -> caption for a directory source, keys made relative to `root` like the walk's keys."""
    path, resolved_root = Path(manifest).expanduser(), root.resolve()
    with open_local_manifest(path) as stream:
        rows = read_manifest(stream, path.name, path_column=path_column, caption_column=caption_column)
        return caption_map(rows, lambda cell: manifest_key(cell, resolved_root))


def local_path(text: str) -> Path:
    """A manifest's path cell as a path: plain paths and file:// URIs."""
    if text.startswith("file://"):
        return Path(unquote(urlparse(text).path))
    return Path(text)


def manifest_key(text: str, root: Path) -> str:
    """The key a manifest row names: relative to `root` with `/` separators where possible."""
    path = local_path(text)
    if path.is_absolute():
        try:
            return path.resolve().relative_to(root).as_posix()
        except ValueError:
            return path.as_posix()
    normalised = posixpath.normpath(path.as_posix())
    return normalised[2:] if normalised.startswith("./") else normalised


def _dir_prefix(path: Path) -> str:
    text = path.as_posix()
    return text if text.endswith("/") else text + "/"


def _has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _is_extensionless_image(entry: os.DirEntry[str]) -> bool:
    if os.path.splitext(entry.name)[1]:
        return False
    try:
        with open(entry.path, "rb") as handle:
            return sniff_format(handle.read(SNIFF_BYTES)) is not None
    except OSError:
        return False


def _find_sidecar(entry: os.DirEntry[str], names: set[str]) -> tuple[str | None, str | None]:
    for name in sidecar_names(entry.name):
        if name in names:
            path = os.path.join(os.path.dirname(entry.path), name)
            try:
                stat = os.stat(path)
            except OSError:
                continue
            return path, f"{stat.st_mtime_ns}:{stat.st_size}"
    return None, None


def read_file(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        raise FetchError("file disappeared before it could be read", retryable=True) from None
    except OSError as exc:
        raise FetchError(f"cannot read file: {exc.strerror or exc}") from exc
