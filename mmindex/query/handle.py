"""`mmindex.connect()`: one handle on an images table for notebooks and the search server.

    idx = mmindex.connect("./mmindex.lancedb", table="images")
    idx.search("a red bicycle", k=20, where="width > 500")     # a grid of thumbnails in Jupyter
    idx.search(image="query.jpg"); idx.similar(row_id); idx.duplicates(threshold=0.97)

The table's embedding model loads on the first query that needs it; reads always see the rows that
index runs have committed since.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from mmindex.config import Settings
from mmindex.errors import ConfigError, TableError
from mmindex.models.clip import ClipEmbedder
from mmindex.query.relevance import Relevance, relevance
from mmindex.query.request import MAX_K, SearchRequest
from mmindex.query.results import DuplicateGroup, Duplicates, LabelScore, Results, without_exact_duplicates
from mmindex.query.search import DEFAULT_LABEL_TEMPLATE, ImageQuery, Searcher, with_synthetic
from mmindex.store.reader import Store
from mmindex.store.upkeep import table_stats

if TYPE_CHECKING:
    from mmindex.query.compare import Comparison, SideBySide


class VectorPage(NamedTuple):
    """What a vector query asks besides its text or vector: the page, the filter and the controls.
    Queries with the same one can be answered by one multi-vector LanceDB query."""

    k: int
    offset: int
    where: str | None
    exclude: str | None  # a row left out of the ranking ("more like this" leaves out its own row)
    relevance: Relevance
    columns: tuple[str, ...]
    generation: str | None  # the embedding generation searched (None: the active one)


class VectorEngine(Protocol):
    """What answers the vector part of a search: the rows nearest a text or a vector. `ImageIndex`
    is one (one query at a time); the search server's batches concurrent queries."""

    def nearest_text(self, text: str, page: VectorPage) -> Results: ...

    def nearest(
        self, vector: np.ndarray | Sequence[float], page: VectorPage, query: str = "vector"
    ) -> Results: ...


DUPLICATE_TILE = 4096  # rows per side of one similarity tile (64 MB of float32 scores)


class ImageIndex:
    """Search, look at and inspect one images table."""

    def __init__(
        self,
        store: Store,
        *,
        device: str = "auto",
        precision: str = "auto",
        quantize: str | None = None,
        embedder: ClipEmbedder | None = None,
    ) -> None:
        self.store = store
        self.searcher = Searcher(store, embedder, device=device, precision=precision, quantize=quantize)
        self._by_generation: dict[str, Searcher] = {}
        store.lancedb_table()  # a missing table is one clear error now, not at the first query

    def searcher_for(self, generation: str | None) -> Searcher:
        """The searcher of a named embedding generation (None: the active one, `self.searcher`)."""
        if generation in (None, "active") or generation == self.searcher.facts().generation(None).name:
            return self.searcher
        self.searcher.facts().generation(generation)  # an unknown name is one clear error
        if generation not in self._by_generation:
            self._by_generation[generation] = Searcher(
                self.store,
                device=self.searcher.device,
                precision=self.searcher.precision,
                quantize=self.searcher.quantize,
                generation=generation,
            )
        return self._by_generation[generation]

    def compare(
        self, a: str, b: str, *, queries: int = 200, texts: Sequence[str] | None = None
    ) -> Comparison:
        """A shadow evaluation of generations `a` and `b` (mmindex.query.compare) on up to `queries` of
        the table's human captions, or on `texts`."""
        from mmindex.query.compare import compare, labelled_queries
        from mmindex.store.generations import generation_named

        schema = self.searcher.facts().schema
        chosen = (generation_named(schema, a), generation_named(schema, b))
        if chosen[0].name == chosen[1].name:
            raise ConfigError(f"{a} and {b} are the same generation: compare two different ones")
        labelled = labelled_queries(self.table, queries, texts)
        asked = list(dict.fromkeys(texts))[:queries] if texts is not None else list(labelled)
        searchers = (self.searcher_for(a), self.searcher_for(b))
        names = (chosen[0].name, chosen[1].name)
        return compare(searchers, names, (chosen[0].model, chosen[1].model), asked, labelled)

    def side_by_side(self, text: str, a: str, b: str, k: int = 10) -> SideBySide:
        """One text query in two generations, drawn side by side in a notebook."""
        from mmindex.query.compare import SideBySide

        return SideBySide(text, {name: self.search(text, k=k, generation=name) for name in (a, b)})

    def generations(self) -> list[dict[str, Any]]:
        """The table's embedding generations (name, model, dim, state, coverage), the active first. A
        generation that rows indexed since its build lack is `building` again until a reembed run
        catches it up."""
        from mmindex.store.generations import generations

        table = self.store.lancedb_table()
        rows = table.count_rows()
        listed = []
        for generation in generations(table.schema):
            filled = (
                table.count_rows(f"{generation.image_column} IS NOT NULL")
                if generation.state != "retired"
                else 0
            )
            entry = {**generation.to_dict(), "rows_embedded": filled, "rows": rows}
            if generation.state == "ready" and filled < rows:  # rows indexed since it was built
                entry["state"] = "building"
            listed.append(entry)
        return listed

    def __repr__(self) -> str:
        info = self.store.info()
        return f"<ImageIndex {self.store.describe()}: {info.rows} rows, {info.model} ({info.dim}-d)>"

    def __len__(self) -> int:
        return int(self.store.info().rows)

    @property
    def table(self) -> Any:
        """The raw LanceDB table, for queries mmindex does not wrap (read only)."""
        return self.store.lancedb_table()

    def stats(self) -> dict[str, Any]:
        return table_stats(self.store)

    def search(
        self,
        text: str | None = None,
        *,
        image: ImageQuery | None = None,
        vector: np.ndarray | Sequence[float] | None = None,
        k: int = 10,
        where: str | None = None,
        mode: str = "vector",
        offset: int = 0,
        synthetic: str = "include",
        distinct: bool = False,
        imagine: int = 0,
        generator: str | None = None,
        min_score: float | None = None,
        order_by: str | None = None,
        columns: Sequence[str] = (),
        generation: str | None = None,
    ) -> Results:
        """Images for one query: `text`, `image` (path, bytes or PIL image) or a `vector` from the
        table's model. The keywords are those of `SearchRequest` (mmindex.query.request), which says
        what each does: `mode` ("vector", "text" for BM25 over captions, "hybrid"), `k`, `offset`,
        `where`, `synthetic`, `distinct`, `min_score`, `order_by`, `generation`, `imagine` and
        `generator`. Hits carry id, uri, key, caption, caption_source, width, height, format and
        synthetic, plus `columns` ("thumbnail": the preview bytes, else read when a notebook grid is
        drawn; "*": every column but the embeddings) in `to_arrow()`."""
        request = SearchRequest(
            text=text,
            image=image,
            vector=vector,
            mode=mode,
            k=k,
            offset=offset,
            where=where,
            synthetic=synthetic,
            distinct=distinct,
            min_score=min_score,
            order_by=order_by,
            generation=generation,
            imagine=imagine,
            generator=generator,
            columns=tuple(columns),
        )
        return self.execute(request)

    def execute(
        self,
        request: SearchRequest,
        *,
        engine: VectorEngine | None = None,
        exclude: str | None = None,
        hidden_digest: str | None = None,
    ) -> Results:
        """Answer a search request: what `search()`, `mmindex search` and the search server all call.

        `engine` embeds texts and finds nearest vectors (the server passes one that batches
        concurrent queries; default: this handle's searchers). `exclude` leaves a row out of the
        ranking ("more like this" leaves out its own row); with `request.distinct`, exact copies of a
        better hit are hidden, and so are those of `hidden_digest` (the file a "more like this"
        query starts from)."""
        engine = engine or self
        facts = self.searcher.facts()
        where = with_synthetic(request.where, request.synthetic, facts.names)
        controls = relevance(request.min_score, request.order_by, lambda: facts.schema)
        searcher = self.searcher_for(request.generation)
        if request.imagine:
            assert request.text is not None  # the request checked it
            text, count, generator = request.text, request.imagine, request.generator
            return self._imagined(text, count, generator, request.k, where, request.offset, request.mode)
        k, offset = request.k, request.offset
        # with distinct, more is fetched, copies are hidden, then the page is cut (and ordered)
        fetch_k, fetch_offset = (min(2 * (offset + k), MAX_K), 0) if request.distinct else (k, offset)
        whole = not request.distinct or controls.orders_whole_set
        fetched = controls if whole else Relevance(controls.min_score)
        columns = (*request.columns, *(("sha256",) if request.distinct else ()))
        page = VectorPage(fetch_k, fetch_offset, where, exclude, fetched, columns, request.generation)
        if request.mode == "vector" and request.text is not None:
            found = engine.nearest_text(request.text, page)
        elif request.mode == "vector":
            vector = request.vector if request.vector is not None else searcher.embed_image(request.image)
            found = engine.nearest(vector, page, query=request.query)
        else:
            assert request.text is not None  # the request checked it
            searched = {"text": searcher.fulltext, "hybrid": searcher.hybrid}[request.mode]
            found = searched(
                request.text, fetch_k, where, offset=fetch_offset, relevance=fetched, columns=columns
            )
        if not request.distinct:
            return found
        kept = without_exact_duplicates(found, offset, k, hidden_digest)
        if fetched is controls:
            return kept
        return kept.with_table(Relevance(order_by=controls.order_by).page(kept.to_arrow(), 0, k))

    # the default VectorEngine: this handle's own searchers, one query at a time

    def text_vector(self, text: str, generation: str | None = None) -> np.ndarray:
        """The text's embedding by the model of `generation` (None: the active one)."""
        vector: np.ndarray = self.searcher_for(generation).text_encoder.embed_texts([text])[0]
        return vector

    def nearest_text(self, text: str, page: VectorPage) -> Results:
        """The rows nearest a text, embedded by the model of the page's generation."""
        return self.nearest(self.text_vector(text, page.generation), page, query=text)

    def nearest(
        self, vector: np.ndarray | Sequence[float], page: VectorPage, query: str = "vector"
    ) -> Results:
        """The rows nearest a vector of the page's generation (mmindex.query.search.Searcher.vectors)."""
        return self.searcher_for(page.generation).vector(
            vector,
            page.k,
            page.where,
            offset=page.offset,
            query=query,
            exclude=page.exclude,
            relevance=page.relevance,
            columns=page.columns,
        )

    def _imagined(
        self, text: str, count: int, generator: str | None, k: int, where: str | None, offset: int, mode: str
    ) -> Results:
        from mmindex.query.imagine import fuse, imagine_vectors

        if count < 0:
            raise ConfigError(f"imagine must be 0 or more images, got {count}")
        depth = offset + k
        words = {"text": self.searcher.fulltext, "hybrid": self.searcher.hybrid}.get(mode, self.searcher.text)
        from_text = words(text, depth, where)
        size = self.searcher.embedder.preprocess.min_side * 2
        vectors = imagine_vectors(self._generator(generator), self.searcher.embedder, text, count, size)
        imagined = [self.searcher.vector(vector, depth, where) for vector in vectors]
        return fuse(from_text, imagined, k, offset, query=text)

    def _generator(self, name: str | None) -> Any:
        """The text-to-image model for imagined queries, loaded once per handle and name."""
        from mmindex.models.generator import load_generator, resolve_generator

        resolved = resolve_generator(name)
        cache: dict[str, Any] = self.__dict__.setdefault("_generators", {})
        if resolved not in cache:
            cache[resolved] = load_generator(resolved, device=self.searcher.device)
        return cache[resolved]

    def similar(self, row_id: str, k: int = 10, where: str | None = None, *, offset: int = 0) -> Results:
        """ "More like this": the images closest to an indexed one (itself left out)."""
        vector = self.embedding(row_id)
        found = self.execute(SearchRequest(vector=vector, k=k, offset=offset, where=where), exclude=row_id)
        found.query = f"like {row_id}"
        return found

    def captions_for(self, image: ImageQuery, k: int = 5, where: str | None = None) -> Results:
        """The stored captions closest to an image (image -> text), one hit per distinct caption."""
        return self.searcher.captions(image, k, where)

    def labels(
        self, image: ImageQuery, labels: Sequence[str], template: str = DEFAULT_LABEL_TEMPLATE
    ) -> list[LabelScore]:
        """Zero-shot labels for an image, best first (cosine score and softmax probability)."""
        return self.searcher.labels(image, labels, template)

    def embedding(self, row_id: str, column: str = "image_embedding") -> np.ndarray:
        """A row's stored embedding."""
        value = self.row(row_id, [column])[column]
        if value is None:
            raise TableError(f"no row with id {row_id!r} in table {self.store.describe()}")
        return np.asarray(value, dtype=np.float32)

    def row(self, row_id: str, columns: Sequence[str]) -> dict[str, Any]:
        """A row's id and stored `columns`."""
        rows = self.searcher.rows([row_id], list(columns))
        if not rows:
            raise TableError(f"no row with id {row_id!r} in table {self.store.describe()}")
        return rows[0]

    def thumbnail(self, row_id: str) -> bytes | None:
        """A row's stored thumbnail (WebP or JPEG bytes), or None if it has none."""
        if "thumbnail" not in self.searcher.facts().names:
            return None
        rows = self.searcher.rows([row_id], ["thumbnail"])
        if not rows:
            raise TableError(f"no row with id {row_id!r} in table {self.store.describe()}")
        value: bytes | None = rows[0]["thumbnail"]
        return value

    def sample_captions(self, count: int = 64) -> list[str]:
        """Up to `count` of the table's captions (human or generated), for judging a text model."""
        if "caption" not in self.searcher.facts().names:
            return []
        query = self.table.search().where("caption IS NOT NULL").select(["caption"]).limit(count)
        return [text for text in query.to_arrow().column("caption").to_pylist() if text]

    def duplicates(self, threshold: float = 0.97, where: str | None = None) -> Duplicates:
        """Exact duplicates (same SHA-256 of the file) and near-duplicate groups: images whose
        embeddings have a cosine of at least `threshold`, linked transitively. Exact copies count once
        in the near groups. Exact pairwise search in tiles: O(rows^2) work, O(rows) memory; restrict a
        large table with `where`."""
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"threshold must be in (0, 1], got {threshold}")
        ids, keys, digests, vectors = self._embeddings(where)
        groups = _exact_groups(ids, keys, digests)
        first_copies = _first_of_each_digest(digests)
        groups += _near_groups(
            [ids[i] for i in first_copies], [keys[i] for i in first_copies], vectors[first_copies], threshold
        )
        shown = [row_id for group in groups[:50] for row_id in group.ids]
        return Duplicates(groups, self.searcher.thumbnails(shown))

    # -- helpers ---------------------------------------------------------------------------------

    def _embeddings(self, where: str | None) -> tuple[list[str], list[str], list[str | None], np.ndarray]:
        query = self.table.search().select(["id", "key", "sha256", "image_embedding"]).limit(None)
        if where:
            query = query.where(where)
        ids: list[str] = []
        keys: list[str] = []
        digests: list[str | None] = []
        parts: list[np.ndarray] = []
        for batch in _batches(query, where):
            ids += batch.column("id").to_pylist()
            keys += batch.column("key").to_pylist()
            digests += batch.column("sha256").to_pylist()
            flat = batch.column("image_embedding").flatten().to_numpy(zero_copy_only=False)
            parts.append(np.asarray(flat, dtype=np.float32).reshape(batch.num_rows, -1))
        dim = self.store.info().dim or 0
        return ids, keys, digests, np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)


def connect(
    db: str | None = None,
    table: str | None = None,
    *,
    device: str = "auto",
    precision: str = "auto",
    quantize: str | None = None,
) -> ImageIndex:
    """Open a table for searching (default ./mmindex.lancedb, table images; or MMINDEX_DB/MMINDEX_TABLE).
    An `s3://` database is reached with the MMINDEX_S3_* settings. `precision` and `quantize` say how
    the table's model computes query embeddings (as for indexing; `quantize="int8"` makes text queries
    on a CPU about 2.5x faster, within cosine 0.99 of fp32)."""
    settings = Settings.from_env(db=db, table=table)
    return ImageIndex(Store.from_settings(settings), device=device, precision=precision, quantize=quantize)


def _batches(query: Any, where: str | None) -> Iterator[Any]:
    try:
        yield from query.to_batches(65536)
    except (ValueError, RuntimeError) as exc:
        if where:
            raise TableError(f"check the where filter {where!r}: {exc}") from exc
        raise


def _exact_groups(ids: list[str], keys: list[str], digests: list[str | None]) -> list[DuplicateGroup]:
    members: dict[str, list[int]] = {}
    for row, digest in enumerate(digests):
        if digest:
            members.setdefault(digest, []).append(row)
    groups = [
        DuplicateGroup("exact", [ids[i] for i in rows], [keys[i] for i in rows], 1.0)
        for rows in members.values()
        if len(rows) > 1
    ]
    return sorted(groups, key=lambda group: (-len(group.ids), group.keys[0]))


def _first_of_each_digest(digests: list[str | None]) -> list[int]:
    seen: set[str] = set()
    keep = []
    for row, digest in enumerate(digests):
        if digest is None or digest not in seen:
            keep.append(row)
            if digest is not None:
                seen.add(digest)
    return keep


def _near_groups(
    ids: list[str], keys: list[str], vectors: np.ndarray, threshold: float
) -> list[DuplicateGroup]:
    """Connected components of the pairs with cosine >= threshold, by tiled exact search."""
    parent = list(range(len(ids)))
    weakest: dict[int, float] = {}

    def root(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    n = len(ids)
    for start in range(0, n, DUPLICATE_TILE):
        block = vectors[start : start + DUPLICATE_TILE]
        for other in range(start, n, DUPLICATE_TILE):
            scores = block @ vectors[other : other + DUPLICATE_TILE].T
            rows, cols = np.nonzero(scores >= threshold)
            for row, col in zip(rows.tolist(), cols.tolist(), strict=True):
                a, b = start + row, other + col
                if a >= b:
                    continue
                score = float(scores[row, col])
                ra, rb = root(a), root(b)
                if ra != rb:
                    parent[rb] = ra
                    weakest[ra] = min(weakest.get(ra, 1.0), weakest.get(rb, 1.0), score)
    members: dict[int, list[int]] = {}
    for node in range(n):
        members.setdefault(root(node), []).append(node)
    groups = [
        DuplicateGroup(
            "near", [ids[i] for i in rows], [keys[i] for i in rows], round(weakest.get(top, 1.0), 4)
        )
        for top, rows in members.items()
        if len(rows) > 1
    ]
    return sorted(groups, key=lambda group: (-len(group.ids), group.keys[0]))
