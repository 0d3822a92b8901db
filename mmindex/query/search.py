"""Queries against an images table: text -> images, image -> images, image -> captions, zero-shot
labels, full-text and hybrid search, each with an optional SQL `where` filter.

Queries are embedded with the model recorded in the table. Vector scores are exact cosine
similarities (higher is better) whether or not the column has an approximate index: an indexed
column is searched with a refine step, which re-ranks the candidates by their exact distance. Results
carry the ids, scores and small columns; thumbnails only when asked for (or when a result set is
drawn as a grid), embeddings never.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmindex.decode import decode
from mmindex.errors import ConfigError, DecodeError, TableError, engine_message
from mmindex.models.clip import ClipEmbedder
from mmindex.models.precision import check_precision
from mmindex.models.text_tower import TextTower
from mmindex.query.facts import FactsCache, TableFacts
from mmindex.query.relevance import ANY, Relevance
from mmindex.query.request import MAX_K, MAX_OFFSET, SYNTHETIC_CHOICES
from mmindex.query.results import LabelScore, Results, rows_at
from mmindex.store import aio
from mmindex.store.reader import Store
from mmindex.store.sql import sql_in, sql_string

DEFAULT_LABEL_TEMPLATE = "a photo of a {}"


ImageQuery = str | Path | bytes | Any  # a path, encoded bytes, or a PIL image


class Searcher:
    """Runs queries against one table, loading the table's embedding model on first use."""

    def __init__(
        self,
        store: Store,
        embedder: ClipEmbedder | None = None,
        *,
        device: str = "auto",
        precision: str = "auto",
        quantize: str | None = None,
        generation: str | None = None,
    ) -> None:
        """`generation` names the embedding generation queried (mmindex.store.generations); None
        follows the active one, and a model change there (`mmindex activate`) loads the new model."""
        check_precision(precision, quantize)
        self.store = store
        self.device = device
        self.precision = precision
        self.quantize = quantize
        self.generation = generation
        self._embedder = embedder
        self._embedder_model: str | None = None  # the model the table recorded when it was loaded
        self._text_tower: TextTower | None = None
        self._text_tower_model: str | None = None
        self._facts = FactsCache(store)
        self._load_lock = threading.Lock()

    @property
    def embedder(self) -> ClipEmbedder:
        model = self._model()
        if self._embedder is None or self._embedder_model not in (None, model):
            with self._load_lock:
                if self._embedder is None or self._embedder_model not in (None, model):
                    self._embedder = ClipEmbedder.load(
                        model, device=self.device, precision=self.precision, quantize=self.quantize
                    )
                    self._text_tower = None
        self._embedder_model = model
        return self._embedder

    def _model(self) -> str:
        return self.facts().generation(self.generation).model

    @property
    def text_encoder(self) -> ClipEmbedder | TextTower:
        """What embeds text queries: the embedder once it is loaded, else the model's text half
        alone (in fp32; loading it skips the image processor and the mode probes)."""
        if self._embedder is not None or self.precision != "auto" or self.quantize is not None:
            return self.embedder
        model = self._model()
        if self._text_tower is None or self._text_tower_model != model:
            with self._load_lock:
                if self._text_tower is None or self._text_tower_model != model:
                    self._text_tower = TextTower.load(model, device=self.device)
                    self._text_tower_model = model
        return self._text_tower

    @property
    def loaded_embedder(self) -> ClipEmbedder | None:
        """The embedder if it has been loaded, without loading it."""
        return self._embedder

    def facts(self) -> TableFacts:
        """The table's columns, model, dimension and indices at its latest version (cached)."""
        return self._facts.current().facts

    def learn_facts(self) -> TableFacts:
        """`facts()` with the constant columns learned now (mmindex.query.facts); a searcher learns
        them in the background on its second query at a version, a server before it starts."""
        return self._facts.learn()

    # -- vector queries --------------------------------------------------------------------------

    def text(
        self,
        query: str,
        k: int = 10,
        where: str | None = None,
        *,
        offset: int = 0,
        relevance: Relevance = ANY,
        columns: Sequence[str] = (),
    ) -> Results:
        """Images whose embedding is closest to the text's."""
        vector = self.text_encoder.embed_texts([query])[0]
        return self.vector(vector, k, where, offset=offset, query=query, relevance=relevance, columns=columns)

    def image(
        self,
        image: ImageQuery,
        k: int = 10,
        where: str | None = None,
        *,
        offset: int = 0,
        relevance: Relevance = ANY,
        columns: Sequence[str] = (),
    ) -> Results:
        """Images most similar to an image (path, bytes or PIL image)."""
        return self.vector(
            self.embed_image(image),
            k,
            where,
            offset=offset,
            query="image",
            relevance=relevance,
            columns=columns,
        )

    def captions(self, image: ImageQuery, k: int = 10, where: str | None = None) -> Results:
        """The stored captions closest to an image, one hit per distinct caption."""
        found = self.vector(self.embed_image(image), k * 5, where, column="text_embedding", query="image")
        if len(found) == 0:
            return found
        table = found.to_arrow()
        first: dict[str, int] = {}
        for row, caption in enumerate(table.column("caption").to_pylist()):
            if caption is not None and caption not in first and len(first) < k:
                first[caption] = row
        return Results(rows_at(table, list(first.values())), query="image", thumbnails=self.thumbnails)

    def labels(
        self, image: ImageQuery, labels: Sequence[str], template: str = DEFAULT_LABEL_TEMPLATE
    ) -> list[LabelScore]:
        """Zero-shot classification: each label's cosine score and softmax probability, best first."""
        labels = [label.strip() for label in labels if label.strip()]
        if not labels:
            raise ConfigError("give at least one label, e.g. --labels 'cat,dog'")
        image_vector = self.embed_image(image)
        prompts = [template.format(label) if "{}" in template else f"{template} {label}" for label in labels]
        scores = self.embedder.embed_texts(prompts) @ image_vector
        logits = self.embedder.logit_scale * scores
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        ranked = sorted(zip(labels, scores, probabilities, strict=True), key=lambda row: -row[1])
        return [LabelScore(label, float(score), float(p)) for label, score, p in ranked]

    def vector(
        self,
        vector: np.ndarray | Sequence[float],
        k: int = 10,
        where: str | None = None,
        column: str = "image_embedding",
        *,
        offset: int = 0,
        query: str = "vector",
        exclude: str | None = None,
        relevance: Relevance = ANY,
        columns: Sequence[str] = (),
    ) -> Results:
        """Nearest rows to a query vector in `column`, scored by exact cosine similarity; `offset`
        skips the first rows (paging); the row with id `exclude` is left out of the ranking before
        paging ("more like this" leaves out the row it starts from); `relevance` cuts the ranking at
        a score or orders it by a column (mmindex.query.relevance). Results carry the hit's columns
        and `columns` ("thumbnail" for the preview bytes, "*" for every column but the vectors);
        thumbnails not read with the hits are read when the results are drawn."""
        return self.vectors(
            [vector],
            k,
            where,
            column,
            offset=offset,
            queries=[query],
            exclude=exclude,
            relevance=relevance,
            columns=columns,
        )[0]

    def vectors(
        self,
        vectors: Sequence[np.ndarray | Sequence[float]],
        k: int = 10,
        where: str | None = None,
        column: str = "image_embedding",
        *,
        offset: int = 0,
        queries: Sequence[str] | None = None,
        exclude: str | None = None,
        relevance: Relevance = ANY,
        columns: Sequence[str] = (),
    ) -> list[Results]:
        """`vector` for several query vectors at once, in one LanceDB query: each query costs a
        fraction of a query of its own (the search server batches concurrent queries this way)."""
        _check_k(k, offset)
        if not vectors:
            return []
        snapshot = self._facts.for_query()
        facts = snapshot.facts
        query_vectors = [self._checked(vector, facts) for vector in vectors]
        columns = facts.result_columns([*columns, *relevance.columns])
        stored = facts.stored_columns(columns)
        column = self._column(column, facts)
        indexed = column in facts.indexed
        settings = facts.query_settings(column, filtered=bool(where))
        wanted = relevance.depth(offset, k) + (1 if exclude is not None else 0)
        max_distance = relevance.max_distance()

        def search(positions: list[int], exact: bool) -> list[pa.Table]:
            # a fresh builder each time: its methods modify it
            given = (
                query_vectors[positions[0]] if len(positions) == 1 else [query_vectors[i] for i in positions]
            )
            built = snapshot.reads.query().nearest_to(given).column(column).distance_type("cosine")
            built = built.select([*stored, "_distance"]).limit(wanted)  # named: Lance warns otherwise
            if max_distance is not None:
                built = built.distance_range(upper_bound=max_distance)
            built = built.bypass_vector_index() if exact else _tuned(built, settings)
            if where:
                built = built.where(where)  # before the search (the async builder's default)
            return _per_query(_run(built, where), len(positions))

        everyone = list(range(len(query_vectors)))
        found = search(everyone, exact=not indexed)
        if indexed and where:
            # an IVF index only searches the partitions it probes: a selective filter can leave fewer
            # rows there than exist. Then the filter is selective, and exact search over it is cheap.
            short = [i for i in everyone if found[i].num_rows < wanted]
            if short:
                for i, exact in zip(short, search(short, exact=True), strict=True):
                    found[i] = exact
        names = queries or ["vector"] * len(query_vectors)
        return [
            self._ranked(
                facts.with_constants(_without_id(result, exclude), columns), offset, k, name, relevance
            )
            for result, name in zip(found, names, strict=True)
        ]

    def _column(self, column: str, facts: TableFacts) -> str:
        """A known vector column as the queried generation names it."""
        generation = facts.generation(self.generation)
        return {"image_embedding": generation.image_column, "text_embedding": generation.text_column}.get(
            column, column
        )

    def _checked(self, vector: np.ndarray | Sequence[float], facts: TableFacts) -> np.ndarray:
        """The query vector as float32 and unit length, refused if its dimension is not the table's."""
        array = np.asarray(vector, dtype=np.float32).reshape(-1)
        generation = facts.generation(self.generation)
        if generation.dim and array.shape[0] != generation.dim:
            raise ConfigError(
                f"the query vector has {array.shape[0]} dimensions, but table {self.store.describe()} "
                f"holds {generation.dim}-d embeddings of {generation.model}: embed the query with that model"
            )
        if not np.all(np.isfinite(array)) or not np.any(array):
            raise ConfigError("the query vector must be finite and not all zeros")
        return array / np.linalg.norm(array)

    def _ranked(self, result: pa.Table, offset: int, k: int, query: str, relevance: Relevance) -> Results:
        """Rows scored by their exact cosine to the query (1 - the exact cosine distance), best first,
        then paged (`relevance`, `offset`, `k`)."""
        if result.num_rows == 0:
            return Results.empty(query=query)
        distances = result.column("_distance").to_numpy(zero_copy_only=False)
        scores = pa.array(1.0 - np.asarray(distances, dtype=np.float32), pa.float32())
        ranked = result.drop_columns(["_distance"]).append_column("score", scores)
        page = relevance.page(ranked.sort_by([("score", "descending")]), offset, k)
        return Results(page, query=query, thumbnails=self.thumbnails)

    # -- rows by id ------------------------------------------------------------------------------

    def rows(self, ids: Sequence[str], columns: Sequence[str]) -> list[dict[str, Any]]:
        """The rows with these ids (in no particular order): their id and `columns`."""
        if not ids:
            return []
        table = self.store.lancedb_table()
        where = f"id = {sql_string(ids[0])}" if len(ids) == 1 else sql_in("id", list(ids))
        query = table.search().where(where).select(list(dict.fromkeys(["id", *columns]))).limit(None)
        rows: list[dict[str, Any]] = query.to_arrow().to_pylist()
        return rows

    def thumbnails(self, ids: Sequence[str]) -> dict[str, bytes | None]:
        """The stored thumbnails of these rows (WebP or JPEG bytes; None for a row without one)."""
        if "thumbnail" not in self.facts().names:
            return {}
        return {row["id"]: row["thumbnail"] for row in self.rows(ids, ["thumbnail"])}

    # -- text queries ----------------------------------------------------------------------------

    def fulltext(
        self,
        query: str,
        k: int = 10,
        where: str | None = None,
        *,
        offset: int = 0,
        relevance: Relevance = ANY,
        columns: Sequence[str] = (),
    ) -> Results:
        """BM25 full-text search over captions (human and generated). Scores are BM25, not cosine."""
        _check_k(k, offset)
        _check_unscaled(relevance, "bm25")
        snapshot = self._facts.for_query()
        facts = snapshot.facts
        self._require_fts(facts)
        columns = facts.result_columns([*columns, *relevance.columns])
        search = snapshot.table.search(query, query_type="fts", fts_columns="caption")
        search = search.select([*facts.stored_columns(columns), "_score"]).limit(offset + k)
        if where:
            search = search.where(where, prefilter=True)
        result = _run(search, where)
        page = relevance.page(facts.with_constants(_scored(result, "_score"), columns), offset, k)
        return Results(page, score_kind="bm25", query=query, thumbnails=self.thumbnails)

    def hybrid(
        self,
        query: str,
        k: int = 10,
        where: str | None = None,
        *,
        offset: int = 0,
        relevance: Relevance = ANY,
        columns: Sequence[str] = (),
    ) -> Results:
        """Vector (text -> image) and full-text results fused by reciprocal rank; score is the RRF score."""
        from lancedb.rerankers import RRFReranker

        _check_k(k, offset)
        _check_unscaled(relevance, "rrf")
        snapshot = self._facts.for_query()
        facts = snapshot.facts
        self._require_fts(facts)
        columns = facts.result_columns([*columns, *relevance.columns])
        vector = self.text_encoder.embed_texts([query])[0]
        image_column = self._column("image_embedding", facts)
        search = (
            snapshot.table.search(query_type="hybrid", vector_column_name=image_column, fts_columns="caption")
            .vector(vector)
            .text(query)
            .distance_type("cosine")
            .rerank(RRFReranker())
            .select(facts.stored_columns(columns))
            .limit(offset + k)
        )
        search = _tuned(search, facts.query_settings(image_column, filtered=bool(where)))
        if where:
            search = search.where(where, prefilter=True)
        result = _run(search, where)
        page = relevance.page(facts.with_constants(_scored(result, "_relevance_score"), columns), offset, k)
        return Results(page, score_kind="rrf", query=query, thumbnails=self.thumbnails)

    # -- helpers ---------------------------------------------------------------------------------

    def embed_image(self, image: ImageQuery) -> np.ndarray:
        from PIL import Image

        if isinstance(image, Image.Image):
            pil = image
        else:
            data = image if isinstance(image, bytes) else _read_query_image(Path(image))
            try:
                pil = decode(data, min_side=self.embedder.preprocess.min_side).image
            except DecodeError:
                raise
            except Exception as exc:  # not known to mean a bad file, but a query needs one clear line
                raise DecodeError(f"cannot decode the query image: {type(exc).__name__}: {exc}") from exc
        vector: np.ndarray = self.embedder.embed_images([pil])[0]
        return vector

    def _require_fts(self, facts: TableFacts) -> None:
        if "caption" not in facts.indexed:
            raise TableError(
                f"table {self.store.describe()} has no captions to search (no full-text index yet)"
            )


def _tuned(search: Any, settings: dict[str, int]) -> Any:
    if "refine_factor" in settings:
        search = search.refine_factor(settings["refine_factor"])
    if "nprobes" in settings:
        search = search.nprobes(settings["nprobes"])
    return search


def _read_query_image(path: Path) -> bytes:
    try:
        return path.expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read query image {path}: {exc.strerror or exc}") from exc


def _check_k(k: int, offset: int = 0) -> None:
    if not 1 <= k <= MAX_K:
        raise ConfigError(f"k must be between 1 and {MAX_K}, got {k}")
    if not 0 <= offset <= MAX_OFFSET:
        raise ConfigError(f"offset must be between 0 and {MAX_OFFSET}, got {offset}")


def _check_unscaled(relevance: Relevance, score_kind: str) -> None:
    if relevance.min_score is not None:
        raise ConfigError(f"min_score is a cosine cutoff; {score_kind} scores have no fixed scale")


def _scored(result: pa.Table, column: str) -> pa.Table:
    """A result with its engine's score column renamed to `score` (other internal columns dropped)."""
    scores = result.column(column).cast(pa.float32())
    internal = [name for name in result.column_names if name.startswith("_")]
    return result.drop_columns(internal).append_column("score", scores)


def _per_query(result: pa.Table, count: int) -> list[pa.Table]:
    """A multi-vector query's rows split by the query they answer (`query_index`)."""
    if "query_index" not in result.column_names:  # one query, or no rows at all
        return [result] if count == 1 else [result.slice(0, 0)] * count
    index = result.column("query_index").to_numpy()
    rest = result.drop_columns(["query_index"])
    return [rest.filter(pa.array(index == i)) for i in range(count)]


def _without_id(result: pa.Table, row_id: str | None) -> pa.Table:
    if row_id is None or result.num_rows == 0:
        return result
    return result.filter(pc.not_equal(result.column("id"), row_id))


def _run(query: Any, where: str | None) -> Any:
    """The query's rows as an Arrow table; `query` is LanceDB's synchronous or async builder."""
    try:
        result = query.to_arrow()
        return aio.run(result) if inspect.isawaitable(result) else result
    except (ValueError, RuntimeError, OSError) as exc:
        if where:
            raise TableError(f"the filter {where!r} cannot be applied: {engine_message(exc)}") from exc
        raise


def with_synthetic(where: str | None, synthetic: str, columns: Sequence[str]) -> str | None:
    """`where` narrowed to real images (`exclude`), generated ones (`only`), or left as it is, on a
    table with these `columns`."""
    if synthetic not in SYNTHETIC_CHOICES:
        raise ConfigError(f"synthetic must be one of {', '.join(SYNTHETIC_CHOICES)}, got {synthetic!r}")
    if synthetic == "include":
        return where
    if "synthetic" not in columns:  # a table from before generated images: all of it is real
        clause = "TRUE" if synthetic == "exclude" else "FALSE"
    else:
        clause = "synthetic IS NOT TRUE" if synthetic == "exclude" else "synthetic = TRUE"
    return f"({where}) AND {clause}" if where else clause


def open_searcher(db: str | None = None, table: str | None = None, *, device: str = "auto") -> Searcher:
    """A Searcher over a table; the table's own embedding model is loaded on the first query."""
    from mmindex.config import Settings

    settings = Settings.from_env(db=db, table=table)
    return Searcher(Store.from_settings(settings), device=device)
