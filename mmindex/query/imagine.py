""" "Imagine" queries: a text query also searches image-to-image from images a text-to-image model
makes for it, and the lists are fused by reciprocal rank.

Fusion: score(row) = 1/(60 + rank in the text results) + (1/N) * sum over the N imagined images of
1/(60 + rank in that image's results); a row missing from a list gets nothing from it. The N
imagined lists together weigh as much as the text list, so imagining can re-rank and add candidates
but never drown the query's own words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from mmindex.query.results import Results, rows_at

RRF_K = 60


def fuse(text: Results, imagined: Sequence[Results], k: int, offset: int = 0, query: str = "") -> Results:
    """Reciprocal-rank fusion of a text result list and imagined-image result lists (see module)."""
    scores: dict[str, float] = {}
    rows: dict[str, int] = {}
    tables: list[pa.Table] = []
    weights = [1.0] + [1.0 / max(1, len(imagined))] * len(imagined)
    for weight, results in zip(weights, [text, *imagined], strict=True):
        table = results.to_arrow()
        base = sum(t.num_rows for t in tables)
        tables.append(table)
        for rank, row_id in enumerate(table.column("id").to_pylist(), start=1):
            scores[row_id] = scores.get(row_id, 0.0) + weight / (RRF_K + rank)
            rows.setdefault(row_id, base + rank - 1)
    if not scores:
        return Results.empty(score_kind="rrf", query=query)
    merged = pa.concat_tables(tables, promote_options="permissive")
    order = sorted(scores, key=lambda row_id: -scores[row_id])[offset : offset + k]
    picked = rows_at(merged, [rows[row_id] for row_id in order])
    fused = picked.set_column(
        picked.schema.get_field_index("score"), "score", pa.array([scores[i] for i in order], pa.float64())
    )
    return Results(fused, score_kind="rrf", query=query, thumbnails=text.thumbnail_loader)


def imagine_vectors(generator: Any, embedder: Any, query: str, count: int, size: int) -> np.ndarray:
    """CLIP embeddings of `count` images the generator makes for `query` (seeds 0..count-1)."""
    from mmindex.models.generator import ImageSettings

    images = generator.generate([query] * count, list(range(count)), ImageSettings(width=size, height=size))
    vectors: np.ndarray = embedder.embed_images(images)
    return vectors
