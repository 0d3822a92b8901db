"""Search results: hits, result sets that convert and render, label scores and duplicate groups.

A `Results` set is a sequence of `Hit`s (so `for hit in results` and `results[0]` work) backed by an
Arrow table; it converts with `to_arrow()`, `to_pandas()` and `to_list()`, and shows in Jupyter as a
grid of the thumbnails stored in the table (no access to the original images needed; read when the
grid is drawn unless the search asked for them).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, overload

import pyarrow as pa

from mmindex.errors import ConfigError

HIT_FIELDS = (
    "id", "uri", "key", "caption", "score", "caption_source", "width", "height", "format", "synthetic",
)  # fmt: skip


ThumbnailLoader = Callable[[Sequence[str]], dict[str, bytes | None]]


@dataclass(frozen=True)
class Hit:
    id: str
    uri: str
    key: str
    caption: str | None
    score: float
    caption_source: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    synthetic: bool | None = None  # made by a text-to-image model (None: a table from before schema v3)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float
    probability: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def rows_at(table: pa.Table, positions: Sequence[int]) -> pa.Table:
    """The rows of `table` at `positions`, in that order; none is an empty table of the same schema
    (Arrow's `take([])` cannot infer an index type from an empty list)."""
    return table.take(pa.array(positions, type=pa.int64()))


def hit_from_row(row: dict[str, Any], score: float) -> Hit:
    return Hit(
        id=row["id"],
        uri=row["uri"],
        key=row["key"],
        caption=row.get("caption"),
        score=score,
        caption_source=row.get("caption_source"),
        width=row.get("width"),
        height=row.get("height"),
        format=row.get("format"),
        synthetic=row.get("synthetic"),
    )


class Results(Sequence[Hit]):
    """The hits of one query, best first. `score` is a cosine similarity for vector queries, BM25 for
    full-text ones and a reciprocal-rank score for hybrid ones (`score_kind` says which)."""

    def __init__(
        self,
        table: pa.Table,
        *,
        score_kind: str = "cosine",
        query: str = "",
        thumbnails: ThumbnailLoader | None = None,
    ) -> None:
        """`thumbnails` reads the previews of rows by id, for a `table` without a thumbnail column."""
        self._table = table
        self.score_kind = score_kind
        self.query = query
        self._load_thumbnails = thumbnails
        self._thumbnails: dict[str, bytes | None] | None = None
        rows = table.select([name for name in HIT_FIELDS if name in table.column_names]).to_pylist()
        self._hits = [hit_from_row(row, float(row["score"])) for row in rows]

    def with_table(self, table: pa.Table) -> Results:
        """Results of the same query holding `table` (a subset or reordering of the hits)."""
        return Results(table, score_kind=self.score_kind, query=self.query, thumbnails=self.thumbnail_loader)

    @property
    def thumbnail_loader(self) -> ThumbnailLoader | None:
        """How these results read thumbnails they do not hold (None: they hold them or have none)."""
        return self._load_thumbnails

    @classmethod
    def empty(cls, *, score_kind: str = "cosine", query: str = "") -> Results:
        return cls(
            pa.table({"id": [], "uri": [], "key": [], "score": []}), score_kind=score_kind, query=query
        )

    @overload
    def __getitem__(self, index: int) -> Hit: ...
    @overload
    def __getitem__(self, index: slice) -> list[Hit]: ...
    def __getitem__(self, index: int | slice) -> Hit | list[Hit]:
        return self._hits[index]

    def __len__(self) -> int:
        return len(self._hits)

    def __iter__(self) -> Iterator[Hit]:
        return iter(self._hits)

    def __repr__(self) -> str:
        about = f" for {self.query!r}" if self.query else ""
        lines = [f"<Results: {len(self)} hits ({self.score_kind}){about}>"]
        for rank, hit in enumerate(self._hits[:10], 1):
            caption = f"  {hit.caption!r}" if hit.caption else ""
            lines.append(f"{rank:3d}. {hit.score:7.4f}  {hit.key}{caption}")
        if len(self) > 10:
            lines.append(f"  ... {len(self) - 10} more")
        return "\n".join(lines)

    def to_arrow(self) -> pa.Table:
        """The hits with their score and every stored column but the embeddings; the thumbnails (as
        bytes) when the search asked for them."""
        return self._table

    def to_pandas(self) -> Any:
        _require_pandas()
        return self._table.to_pandas()

    def to_list(self) -> list[dict[str, Any]]:
        """The hits as plain dicts (what `mmindex search --json` prints)."""
        return [hit.to_dict() for hit in self._hits]

    def thumbnail(self, index: int) -> bytes | None:
        """The stored thumbnail of the hit at `index`, or None if the table has none for it."""
        if "thumbnail" in self._table.column_names:
            value: bytes | None = self._table.column("thumbnail")[index].as_py()
            return value
        if self._load_thumbnails is None:
            return None
        if self._thumbnails is None:
            self._thumbnails = self._load_thumbnails([hit.id for hit in self._hits])
        return self._thumbnails.get(self._hits[index].id)

    def _repr_html_(self) -> str:
        cells = [
            _figure(
                self.thumbnail(i),
                hit.key,
                hit.caption,
                f"{hit.score:.3f}" + (" · synthetic" if hit.synthetic else ""),
                hit.id,
            )
            for i, hit in enumerate(self._hits)
        ]
        title = html.escape(f"{len(self)} results" + (f" for {self.query!r}" if self.query else ""))
        return _grid(title, cells)


@dataclass(frozen=True)
class DuplicateGroup:
    """Rows that are the same image (`exact`: same SHA-256) or nearly (cosine >= the threshold)."""

    kind: str  # "exact" or "near"
    ids: list[str]
    keys: list[str]
    similarity: float  # the lowest cosine between linked members (1.0 for exact groups)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Duplicates(Sequence[DuplicateGroup]):
    """Duplicate groups, exact ones first, then near ones by size. Renders as one thumbnail row per group."""

    def __init__(self, groups: list[DuplicateGroup], thumbnails: dict[str, bytes | None]) -> None:
        self._groups = groups
        self._thumbnails = thumbnails

    @overload
    def __getitem__(self, index: int) -> DuplicateGroup: ...
    @overload
    def __getitem__(self, index: slice) -> list[DuplicateGroup]: ...
    def __getitem__(self, index: int | slice) -> DuplicateGroup | list[DuplicateGroup]:
        return self._groups[index]

    def __len__(self) -> int:
        return len(self._groups)

    def __repr__(self) -> str:
        exact = sum(group.kind == "exact" for group in self._groups)
        return f"<Duplicates: {exact} exact groups, {len(self) - exact} near groups>"

    def to_list(self) -> list[dict[str, Any]]:
        return [group.to_dict() for group in self._groups]

    def to_pandas(self) -> Any:
        """One row per (group, member): group number, kind, similarity, id, key."""
        pd = _require_pandas()

        rows = [
            {"group": n, "kind": g.kind, "similarity": g.similarity, "id": row_id, "key": key}
            for n, g in enumerate(self._groups)
            for row_id, key in zip(g.ids, g.keys, strict=True)
        ]
        return pd.DataFrame(rows, columns=["group", "kind", "similarity", "id", "key"])

    def _repr_html_(self) -> str:
        parts = []
        for n, group in enumerate(self._groups[:50]):
            cells = [
                _figure(self._thumbnails.get(row_id), key, None, None, row_id)
                for row_id, key in zip(group.ids, group.keys, strict=True)
            ]
            title = f"group {n}: {group.kind}, {len(group.ids)} images, similarity ≥ {group.similarity:.3f}"
            parts.append(_grid(html.escape(title), cells))
        more = f"<p>... {len(self) - 50} more groups</p>" if len(self) > 50 else ""
        return "".join(parts) + more or "<p>no duplicates</p>"


def _require_pandas() -> Any:
    try:
        import pandas
    except ImportError:
        raise ConfigError('to_pandas() needs pandas: pip install "mmindex[notebook]"') from None
    return pandas


_GRID_STYLE = (
    "display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:10px;"
    "font-family:sans-serif;font-size:12px"
)
_IMG_STYLE = "width:100%;height:150px;object-fit:contain;background:#f3f3f3"


def _grid(title: str, cells: list[str]) -> str:
    grid = f'<div style="{_GRID_STYLE}">{"".join(cells)}</div>'
    return f'<div class="mmindex-results"><p><b>{title}</b></p>{grid}</div>'


def _figure(thumbnail: bytes | None, key: str, caption: str | None, score: str | None, row_id: str) -> str:
    if thumbnail:
        mime = "image/webp" if thumbnail[8:12] == b"WEBP" else "image/jpeg"
        encoded = base64.b64encode(thumbnail).decode()
        picture = f'<img src="data:{mime};base64,{encoded}" style="{_IMG_STYLE}" alt="{html.escape(key)}">'
    else:
        centred = "display:flex;align-items:center;justify-content:center"
        picture = f'<div style="{_IMG_STYLE};{centred}">no preview</div>'
    lines = [f"<b>{html.escape(key)}</b>"]
    if score is not None:
        lines.append(f"score {html.escape(score)}")
    if caption:
        lines.append(html.escape(caption))
    return (
        f'<figure style="margin:0" title="{html.escape(row_id)}">{picture}'
        f"<figcaption>{'<br>'.join(lines)}</figcaption></figure>"
    )


def without_exact_duplicates(found: Results, offset: int, k: int, hidden_digest: str | None) -> Results:
    """The page `offset`..`offset + k` of `found` (fetched from the top, with `sha256`) without exact
    copies of a better hit or of the file `hidden_digest`."""
    table = found.to_arrow()
    digests = table.column("sha256").to_pylist() if "sha256" in table.column_names else [None] * len(found)
    seen: set[str] = {hidden_digest} if hidden_digest is not None else set()
    keep = []
    for row, digest in enumerate(digests):
        if digest is not None and digest in seen:
            continue
        if digest is not None:
            seen.add(digest)
        keep.append(row)
    return found.with_table(rows_at(table, keep[offset : offset + k]))
