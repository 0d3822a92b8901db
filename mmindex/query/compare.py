"""A shadow evaluation of two embedding generations of one table, before switching between them.

Queries are the table's human captions (or texts given): an image that carries the query's caption
is a right answer, as fine-tuning counts it (mmindex.finetuning.metrics). For each generation, through
the same searches users run:

- caption -> image recall@1/5/10: a right image among the top k hits of the caption;
- image -> caption recall@1/5/10: the caption among the k stored captions nearest one of its images;
- overlap@10: the share of the two generations' top-10 images that are the same, per query;
- the queries on which the two disagree most, with their top results.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmindex.errors import ConfigError
from mmindex.query.results import Results
from mmindex.query.search import Searcher
from mmindex.store.sql import sql_in

RECALL_AT = (1, 5, 10)
DEPTH = 10
CAPTION_DEPTH = 5  # candidate rows read per distinct caption wanted (captions repeat across images)
SHOWN_DISAGREEMENTS = 5


@dataclass
class GenerationScores:
    name: str
    model: str
    caption_to_image: dict[str, float] = field(default_factory=dict)
    image_to_caption: dict[str, float] = field(default_factory=dict)


@dataclass
class Comparison:
    a: GenerationScores
    b: GenerationScores
    queries: int
    labelled: int  # queries that are captions of the table (the ones recall is measured on)
    overlap_at_10: float
    disagreements: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "a": self.a.name,
            "b": self.b.name,
            "queries": self.queries,
            "labelled_queries": self.labelled,
            "generations": {
                scores.name: {
                    "model": scores.model,
                    "caption_to_image": scores.caption_to_image,
                    "image_to_caption": scores.image_to_caption,
                }
                for scores in (self.a, self.b)
            },
            "overlap_at_10": self.overlap_at_10,
            "disagreements": self.disagreements,
        }

    def to_markdown(self) -> str:
        """The comparison as a markdown report (the compare flow's artifact)."""
        names = (self.a.name, self.b.name)
        out = [
            f"# `{names[0]}` vs `{names[1]}`",
            "",
            f"{self.queries} queries, {self.labelled} of them captions of the table "
            f"(models: `{self.a.model}`, `{self.b.model}`).",
            "",
            f"| measure | {names[0]} | {names[1]} |",
            "|---|---|---|",
        ]
        for direction in ("caption_to_image", "image_to_caption"):
            for k in RECALL_AT:
                left = getattr(self.a, direction).get(f"r{k}", float("nan"))
                right = getattr(self.b, direction).get(f"r{k}", float("nan"))
                out.append(f"| {direction.replace('_', ' ')} R@{k} | {left:.3f} | {right:.3f} |")
        out += ["", f"Overlap@10 of the top images: {self.overlap_at_10:.3f}"]
        if self.disagreements:
            out += ["", "## Where they disagree most", "", f"| query | overlap | {names[0]} | {names[1]} |"]
            out.append("|---|---|---|---|")
            for case in self.disagreements:
                out.append(
                    f"| {case['query']} | {case['overlap']:.1f} | {', '.join(case[names[0]])} | "
                    f"{', '.join(case[names[1]])} |"
                )
        return "\n".join(out) + "\n"

    def lines(self) -> list[str]:
        """The comparison as a terminal table."""
        head = f"{'':28}{self.a.name:>18}{self.b.name:>18}"
        rows = [f"{self.queries} queries ({self.labelled} of them captions of the table)", head]
        for direction in ("caption_to_image", "image_to_caption"):
            for k in RECALL_AT:
                left = getattr(self.a, direction).get(f"r{k}", float("nan"))
                right = getattr(self.b, direction).get(f"r{k}", float("nan"))
                rows.append(f"{direction.replace('_', ' ') + f' R@{k}':28}{left:>18.3f}{right:>18.3f}")
        rows.append(f"{'overlap@10 of the top images':28}{self.overlap_at_10:>36.3f}")
        if self.disagreements:
            rows.append("where they disagree most:")
        for case in self.disagreements:
            rows.append(f"  {case['query']!r}: overlap {case['overlap']:.1f}")
            rows.append(f"    {self.a.name}: {', '.join(case[self.a.name])}")
            rows.append(f"    {self.b.name}: {', '.join(case[self.b.name])}")
        return rows


def compare(
    searchers: tuple[Searcher, Searcher],
    names: tuple[str, str],
    models: tuple[str, str],
    queries: Sequence[str],
    captions_of: dict[str, str],
) -> Comparison:
    """Compare two generations on `queries`; `captions_of` maps each caption of the table to the id
    of one image that carries it (the image -> caption queries)."""
    if not queries:
        raise ConfigError("no queries to compare on: the table has no human captions; give --queries FILE")
    scores = tuple(GenerationScores(name, model) for name, model in zip(names, models, strict=True))
    tops: list[list[list[str]]] = [[], []]
    keys: list[list[list[str]]] = [[], []]
    labelled = [query for query in queries if query in captions_of]
    for side, (searcher, result) in enumerate(zip(searchers, scores, strict=True)):
        text_ranks, image_ranks = [], []
        for query in queries:
            hits = searcher.text(query, k=DEPTH)
            tops[side].append([hit.id for hit in hits])
            keys[side].append([hit.key for hit in hits[:3]])
            if query in captions_of:
                text_ranks.append(_first_rank([hit.caption == query for hit in hits]))
                image_ranks.append(_first_rank(_nearest_captions(searcher, captions_of[query], query)))
        result.caption_to_image = _recalls(text_ranks)
        result.image_to_caption = _recalls(image_ranks)
    overlaps = [len(set(a) & set(b)) / DEPTH for a, b in zip(tops[0], tops[1], strict=True)]
    worst = sorted(range(len(queries)), key=lambda i: (overlaps[i], i))[:SHOWN_DISAGREEMENTS]
    disagreements = [
        {"query": queries[i], "overlap": overlaps[i], names[0]: keys[0][i], names[1]: keys[1][i]}
        for i in worst
        if overlaps[i] < 1.0
    ]
    return Comparison(
        scores[0], scores[1], len(queries), len(labelled), float(np.mean(overlaps)), disagreements
    )


def labelled_queries(table: Any, count: int, texts: Sequence[str] | None = None) -> dict[str, str]:
    """Caption -> the id of one image carrying it: the first `count` distinct human captions of the
    table (streamed), or, for given `texts`, those that are captions of the table."""
    found: dict[str, str] = {}
    if texts is not None:
        unique = list(dict.fromkeys(texts))
        for start in range(0, len(unique), 500):
            query = (
                table.search().where(sql_in("caption", unique[start : start + 500])).select(["id", "caption"])
            )
            for row in query.limit(None).to_arrow().to_pylist():
                found.setdefault(row["caption"], row["id"])
        return found
    query = table.search().where("caption_source = 'human'").select(["id", "caption"]).limit(None)
    for batch in query.to_batches(4096):
        for row in batch.to_pylist():
            found.setdefault(row["caption"], row["id"])
            if len(found) >= count:
                return found
    return found


def _nearest_captions(searcher: Searcher, row_id: str, query: str) -> list[bool]:
    """Whether each of the DEPTH distinct stored captions nearest the image `row_id` is `query`."""
    facts = searcher.facts()
    generation = facts.generation(searcher.generation)
    rows = searcher.rows([row_id], [generation.image_column])
    if not rows or rows[0][generation.image_column] is None:
        return []
    found = searcher.vector(rows[0][generation.image_column], DEPTH * CAPTION_DEPTH, column="text_embedding")
    distinct = list(dict.fromkeys(hit.caption for hit in found if hit.caption))[:DEPTH]
    return [caption == query for caption in distinct]


def _first_rank(right: Sequence[bool]) -> int:
    return next((rank for rank, ok in enumerate(right, start=1) if ok), DEPTH + 1)


def _recalls(ranks: Sequence[int]) -> dict[str, float]:
    if not ranks:
        return {}
    return {f"r{k}": float(np.mean(np.asarray(ranks) <= k)) for k in RECALL_AT}


class SideBySide:
    """Two generations' results for one query, drawn side by side in a notebook."""

    def __init__(self, query: str, results: dict[str, Results]) -> None:
        self.query = query
        self.results = results

    def __repr__(self) -> str:
        return "\n\n".join(f"[{name}]\n{results!r}" for name, results in self.results.items())

    def _repr_html_(self) -> str:
        columns = []
        for name, results in self.results.items():
            inner = results._repr_html_()
            columns.append(f'<div style="flex:1;min-width:0"><h4>{html.escape(name)}</h4>{inner}</div>')
        title = html.escape(f"{self.query!r} in {len(self.results)} generations")
        return f'<p><b>{title}</b></p><div style="display:flex;gap:16px">{"".join(columns)}</div>'
