"""Manifests: CSV, JSONL or Parquet files with a path/uri column and a caption column.

A manifest can give captions to a directory (`--captions FILE`), or be the source itself, listing
the images to index. Rows are streamed, never loaded whole, except where captions must be looked up
by key while a directory is walked (then one dict of key -> caption is held).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pyarrow.parquet as pq

from mmindex.captions import clean_caption
from mmindex.errors import SourceError
from mmindex.ingest.sources.base import ScanProblem

MANIFEST_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet")
PATH_COLUMNS = ("path", "uri", "url", "file", "filename", "file_name", "image", "image_path", "key")
CAPTION_COLUMNS = ("caption", "text", "title", "alt", "description")


def is_manifest_name(name: str) -> bool:
    return name.lower().endswith(MANIFEST_SUFFIXES)


@dataclass(frozen=True)
class BadRow:
    """A manifest row that cannot be used (e.g. a JSONL line that is not JSON): a listing problem of
    that row, not of the whole manifest."""

    line: int
    error: str


def read_manifest(
    stream: IO[bytes],
    name: str,
    *,
    path_column: str | None = None,
    caption_column: str | None = None,
) -> Iterator[ManifestRow]:
    """Yield (path, caption) for each row, or a BadRow; `name` decides the format by its suffix.
    SourceError only when the manifest as a whole is unusable (unknown format, no path column)."""
    lowered = name.lower()
    if lowered.endswith(".parquet"):
        rows = _parquet_rows(stream, name, path_column, caption_column)
    elif lowered.endswith((".jsonl", ".ndjson")):
        rows = _jsonl_rows(stream, name, path_column, caption_column)
    elif lowered.endswith((".csv", ".tsv")):
        rows = _csv_rows(stream, name, path_column, caption_column, "\t" if lowered.endswith(".tsv") else ",")
    else:
        raise SourceError(f"{name}: unknown manifest format; use {', '.join(MANIFEST_SUFFIXES)}")
    for row in rows:
        if isinstance(row, BadRow):
            yield row
        elif row[0]:
            caption = row[1]
            yield (
                row[0],
                clean_caption(caption if caption is None or isinstance(caption, str) else str(caption)),
            )


ManifestRow = tuple[str, str | None] | BadRow


def manifest_problem(manifest: str, row: BadRow) -> ScanProblem:
    """The listing problem a bad row becomes, keyed by its line so reruns recognise it."""
    return ScanProblem(f"{manifest}#{row.line}", f"#{row.line}", row.error)


def caption_map(rows: Iterable[ManifestRow], key_of: Callable[[str], str | None]) -> dict[str, str]:
    """key -> caption of a caption manifest's usable rows; `key_of` maps a path cell to the source's
    key (None: the row names an image outside the source). Bad rows and empty captions are skipped."""
    captions: dict[str, str] = {}
    for row in rows:
        if isinstance(row, BadRow) or row[1] is None:
            continue
        key = key_of(row[0])
        if key is not None:
            captions[key] = row[1]
    return captions


def pick_columns(
    columns: list[str], name: str, path_column: str | None, caption_column: str | None
) -> tuple[str, str | None]:
    """Choose the path and caption columns: the given names, else the first conventional name present."""
    lowered = {c.lower(): c for c in columns}

    def choose(given: str | None, candidates: tuple[str, ...], what: str, required: bool) -> str | None:
        if given is not None:
            if given not in columns:
                raise SourceError(f"{name}: no column {given!r} for the {what}; columns are {columns}")
            return given
        for candidate in candidates:
            if candidate in lowered:
                return lowered[candidate]
        if required:
            raise SourceError(
                f"{name}: no {what} column among {columns}; name one of {', '.join(candidates)} "
                f"or pass --path-column"
            )
        return None

    path = choose(path_column, PATH_COLUMNS, "image path", True)
    assert path is not None
    return path, choose(caption_column, CAPTION_COLUMNS, "caption", False)


def _csv_rows(
    stream: IO[bytes], name: str, path_column: str | None, caption_column: str | None, delimiter: str
) -> Iterator[ManifestRow]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")
    reader = csv.DictReader(text, delimiter=delimiter)
    if reader.fieldnames is None:
        return
    path_key, caption_key = pick_columns(list(reader.fieldnames), name, path_column, caption_column)
    for row in reader:
        yield (row.get(path_key) or "").strip(), row.get(caption_key) if caption_key else None


def _jsonl_rows(
    stream: IO[bytes], name: str, path_column: str | None, caption_column: str | None
) -> Iterator[ManifestRow]:
    keys: tuple[str, str | None] | None = None
    for number, raw in enumerate(stream, start=1):
        line = raw.decode("utf-8", errors="replace").strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, or numbers/nesting json refuses
            yield BadRow(number, f"{name} line {number} is not valid JSON ({getattr(exc, 'msg', exc)})")
            continue
        if not isinstance(row, dict):
            yield BadRow(number, f"{name} line {number} is not a JSON object")
            continue
        if keys is None:
            keys = pick_columns(list(row), name, path_column, caption_column)
        path, caption = row.get(keys[0]), row.get(keys[1]) if keys[1] else None
        yield (str(path).strip() if path is not None else ""), caption


def _parquet_rows(
    stream: IO[bytes], name: str, path_column: str | None, caption_column: str | None
) -> Iterator[ManifestRow]:
    try:
        parquet = pq.ParquetFile(stream)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError variants for non-Parquet bytes
        raise SourceError(f"{name}: not a readable Parquet file ({exc})") from exc
    path_key, caption_key = pick_columns(parquet.schema_arrow.names, name, path_column, caption_column)
    columns = [path_key] + ([caption_key] if caption_key else [])
    for batch in parquet.iter_batches(columns=columns, batch_size=8192):
        paths = batch.column(0).to_pylist()
        captions = batch.column(1).to_pylist() if caption_key else [None] * len(paths)
        for path, caption in zip(paths, captions, strict=True):
            yield (str(path).strip() if path is not None else ""), caption


def open_local_manifest(path: Path) -> IO[bytes]:
    try:
        return path.open("rb")
    except OSError as exc:
        raise SourceError(f"cannot read manifest {path}: {exc.strerror or exc}") from exc
