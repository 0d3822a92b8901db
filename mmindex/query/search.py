"""Queries against an images table: text -> images, image -> images, image -> captions, zero-shot
labels, full-text and hybrid search, each with an optional SQL `where` filter.

Queries are embedded with the model recorded in the table. Vector scores are exact cosine
similarities (higher is better) computed from the returned vectors, so they mean the same with or
without an approximate index; an indexed column is searched with a refine step for full recall.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mmindex.errors import ConfigError, DecodeError, TableError, first_line
from mmindex.ingest.decode import decode
from mmindex.models.clip import ClipEmbedder
from mmindex.query.results import Hit, LabelScore, hit_from_row
from mmindex.store.reader import Store

RESULT_COLUMNS = ["id", "uri", "key", "caption", "caption_source", "width", "height", "format"]
DEFAULT_LABEL_TEMPLATE = "a photo of a {}"
REFINE_FACTOR = 10


ImageQuery = str | Path | bytes | Any  # a path, encoded bytes, or a PIL image


class Searcher:
    """Runs queries against one table, loading the table's embedding model on first use."""

    def __init__(self, store: Store, embedder: ClipEmbedder | None = None, *, device: str = "auto") -> None:
        self.store = store
        self.device = device
        self._embedder = embedder

    @property
    def embedder(self) -> ClipEmbedder:
        if self._embedder is None:
            model = self.store.info().model
            if model is None:
                raise TableError(f"table {self.store.describe()} records no embedding model")
            self._embedder = ClipEmbedder.load(model, device=self.device)
        return self._embedder

    # -- vector queries --------------------------------------------------------------------------

    def text(self, query: str, k: int = 10, where: str | None = None) -> list[Hit]:
        """Images whose embedding is closest to the text's."""
        return self.vector(self.embedder.embed_texts([query])[0], k, where)

    def image(self, image: ImageQuery, k: int = 10, where: str | None = None) -> list[Hit]:
        """Images most similar to an image (path, bytes or PIL image)."""
        return self.vector(self.embed_image(image), k, where)

    def captions(self, image: ImageQuery, k: int = 10, where: str | None = None) -> list[Hit]:
        """The stored captions closest to an image, one hit per distinct caption."""
        hits = self.vector(self.embed_image(image), k * 5, where, column="text_embedding")
        distinct: dict[str, Hit] = {}
        for hit in hits:
            if hit.caption is not None and hit.caption not in distinct:
                distinct[hit.caption] = hit
        return list(distinct.values())[:k]

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
        self, vector: np.ndarray, k: int = 10, where: str | None = None, column: str = "image_embedding"
    ) -> list[Hit]:
        """Nearest rows to a query vector in `column`, scored by exact cosine similarity."""
        _check_k(k)
        table = self.store.lancedb_table()
        query = table.search(np.asarray(vector, dtype=np.float32), vector_column_name=column)
        query = query.distance_type("cosine").select([*RESULT_COLUMNS, column, "_distance"]).limit(k)
        if self._indexed(column):
            query = query.refine_factor(REFINE_FACTOR)
        if where:
            query = query.where(where, prefilter=True)
        result = _run(query, where)
        if result.num_rows == 0:
            return []
        vectors = np.asarray(result.column(column).combine_chunks().flatten().to_numpy(zero_copy_only=False))
        scores = vectors.reshape(result.num_rows, -1) @ np.asarray(vector, dtype=np.float32)
        hits = [
            hit_from_row(row, float(score))
            for row, score in zip(result.select(RESULT_COLUMNS).to_pylist(), scores, strict=True)
        ]
        return sorted(hits, key=lambda hit: -hit.score)

    # -- text queries ----------------------------------------------------------------------------

    def fulltext(self, query: str, k: int = 10, where: str | None = None) -> list[Hit]:
        """BM25 full-text search over captions (human and generated). Scores are BM25, not cosine."""
        _check_k(k)
        self._require_fts()
        search = self.store.lancedb_table().search(query, query_type="fts", fts_columns="caption")
        search = search.select([*RESULT_COLUMNS, "_score"]).limit(k)
        if where:
            search = search.where(where, prefilter=True)
        result = _run(search, where)
        return [hit_from_row(row, float(row["_score"])) for row in result.to_pylist()]

    def hybrid(self, query: str, k: int = 10, where: str | None = None) -> list[Hit]:
        """Vector (text -> image) and full-text results fused by reciprocal rank; score is the RRF score."""
        from lancedb.rerankers import RRFReranker

        _check_k(k)
        self._require_fts()
        vector = self.embedder.embed_texts([query])[0]
        search = (
            self.store.lancedb_table()
            .search(query_type="hybrid", vector_column_name="image_embedding", fts_columns="caption")
            .vector(vector)
            .text(query)
            .distance_type("cosine")
            .rerank(RRFReranker())
            .select(RESULT_COLUMNS)
            .limit(k)
        )
        if where:
            search = search.where(where, prefilter=True)
        result = _run(search, where)
        return [hit_from_row(row, float(row["_relevance_score"])) for row in result.to_pylist()]

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

    def _indexed(self, column: str) -> bool:
        return any(index.columns[0] == column for index in self.store.lancedb_table().list_indices())

    def _require_fts(self) -> None:
        if not self._indexed("caption"):
            raise TableError(
                f"table {self.store.describe()} has no captions to search (no full-text index yet)"
            )


def _read_query_image(path: Path) -> bytes:
    try:
        return path.expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read query image {path}: {exc.strerror or exc}") from exc


def _check_k(k: int) -> None:
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")


def _run(query: Any, where: str | None) -> Any:
    try:
        return query.to_arrow()
    except (ValueError, RuntimeError, OSError) as exc:
        if where:
            raise TableError(f"query failed; check the --where filter {where!r}: {first_line(exc)}") from exc
        raise
