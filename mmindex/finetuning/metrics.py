"""Retrieval metrics for image-caption pairs: recall@1/5/10 and median rank in both directions.

Captions are compared as texts: identical captions form one query (text->image) and one candidate
(image->text), and every image carrying a caption is a right answer for it. A corpus where many
images share "a red circle" is then scored for finding *a* red circle, not one particular file.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

RECALL_AT = (1, 5, 10)


def first_hit_ranks(scores: np.ndarray, positives: np.ndarray) -> np.ndarray:
    """For each query row of `scores` [Q, N], the 1-based rank of its best-ranked positive candidate
    (`positives` [Q, N] is boolean)."""
    best_positive = np.where(positives, scores, -np.inf).max(axis=1, keepdims=True)
    ranks: np.ndarray = (scores > best_positive).sum(axis=1) + 1
    return ranks


def unique_captions(captions: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The distinct captions (in first-seen order) and, for each pair, the index of its caption."""
    order: dict[str, int] = {}
    index = np.asarray([order.setdefault(text, len(order)) for text in captions], dtype=np.int64)
    return list(order), index


def retrieval_metrics(
    image_vectors: np.ndarray, caption_index: np.ndarray, text_vectors: np.ndarray
) -> dict[str, float]:
    """Recall@k and median rank, image->text and text->image, for unit image vectors [N, d], each
    pair's caption index [N] and the unit vectors of the distinct captions [C, d]."""
    if len(image_vectors) == 0:
        return {}
    scores = image_vectors @ text_vectors.T  # [N, C]
    positives = caption_index[:, None] == np.arange(len(text_vectors))[None, :]
    metrics: dict[str, float] = {"pairs": float(len(image_vectors)), "captions": float(len(text_vectors))}
    for direction, ranks in (
        ("image_to_text", first_hit_ranks(scores, positives)),
        ("text_to_image", first_hit_ranks(scores.T, positives.T)),
    ):
        for k in RECALL_AT:
            metrics[f"{direction}_r{k}"] = float(np.mean(ranks <= k))
        metrics[f"{direction}_median_rank"] = float(np.median(ranks))
    metrics["mean_recall"] = float(
        np.mean([metrics[f"{d}_r{k}"] for d in ("image_to_text", "text_to_image") for k in RECALL_AT])
    )
    return metrics


def text_to_image_recall(
    image_vectors: np.ndarray,
    captions: Sequence[str],
    query_vectors: np.ndarray,
    queries: Sequence[str],
    k: int,
) -> float:
    """Share of `queries` (texts) with an image captioned exactly like the query in their top `k`."""
    scores = query_vectors @ image_vectors.T
    positives = np.asarray([[caption == query for caption in captions] for query in queries])
    return float(np.mean(first_hit_ranks(scores, positives) <= k)) if len(queries) else 0.0
