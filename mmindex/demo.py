"""The demo's corpus and queries: generated shapes (with a few broken files), and results a person can
judge at a glance, since every sample's file name says what it shows."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from mmindex.query.search import Searcher
from mmindex.toy.shapes import write_corpus

DEMO_QUERIES = ["a red circle", "a blue star", "a yellow triangle", "a green square", "a purple shape"]


def prepare_corpus(directory: Path, images: int) -> Path:
    """Write the sample corpus once (kept between runs, so a second demo shows an incremental run)."""
    corpus = directory / "corpus"
    if not corpus.exists():
        write_corpus(corpus, images, seed=7, captioned_fraction=0.7)
        broken = corpus / "broken"
        broken.mkdir()
        (broken / "truncated.jpg").write_bytes((corpus / "set-a" / "0000-red-circle.jpg").read_bytes()[:300])
        (broken / "not-really-a.png").write_text("this is a text file with an image extension\n")
        (broken / "empty.jpg").write_bytes(b"")
    return corpus


def table_for(model: str | None) -> str:
    return "images" if model is None else "images_" + re.sub(r"[^A-Za-z0-9]+", "_", model).strip("_").lower()


def _matches(key: str, query: str) -> bool:
    words = [w for w in query.split() if w not in ("a", "an", "the", "shape", "photo", "of")]
    name = key.rsplit("/", 1)[-1]
    return all(word in name for word in words)


def show_captions(searcher: Searcher, echo: Callable[[str], None] = print) -> tuple[int, int]:
    """Print the generated captions with a mark saying whether they name the image's colour and shape."""
    table = searcher.store.lancedb_table()
    rows = (
        table.search()
        .where("caption_source = 'generated'")
        .select(["key", "caption", "caption_model"])
        .limit(None)
    )
    generated = sorted(rows.to_arrow().to_pylist(), key=lambda row: row["key"])
    right = sum(_matches(row["key"], row["caption"]) for row in generated)
    if generated:
        echo(f"\ngenerated captions ({generated[0]['caption_model']}), for images that had none:")
        for row in generated:
            mark = "✓" if _matches(row["key"], row["caption"]) else "✗"
            echo(f"  {mark} {row['key']:<36} “{row['caption']}”")
        echo(f"  {right} of {len(generated)} name the colour and shape the image shows")
    return right, len(generated)


def show_queries(searcher: Searcher, corpus: Path, echo: Callable[[str], None] = print) -> tuple[int, int]:
    """Run the demo queries and print results; returns (relevant images found, relevant images that
    exist) summed over the text queries, looking as deep as there are relevant images (R-precision)."""
    keys = (
        searcher.store.lancedb_table()
        .search()
        .select(["key"])
        .limit(None)
        .to_arrow()
        .column("key")
        .to_pylist()
    )
    found = existing = 0
    for query in DEMO_QUERIES:
        relevant = sum(_matches(key, query) for key in keys)
        hits = searcher.text(query, k=max(relevant, 4))
        hit_count = sum(_matches(hit.key, query) for hit in hits[:relevant])
        found, existing = found + hit_count, existing + relevant
        echo(f'\ntext -> images: "{query}"  ({hit_count} of the {relevant} matching images ranked first)')
        for rank, hit in enumerate(hits, 1):
            echo(f"  {rank}. {'✓' if _matches(hit.key, query) else '✗'} {hit.score:6.3f}  {hit.key}")
    sample = sorted(corpus.glob("set-*/*purple-star.*g"))[:1] or sorted(corpus.glob("set-*/*.jpg"))[:1]
    if sample:
        probe = sample[0]
        echo(f"\nimage -> similar images: {probe.relative_to(corpus)}")
        for rank, hit in enumerate(searcher.image(probe, k=4), 1):
            echo(f"  {rank}. {hit.score:6.3f}  {hit.key}")
        echo(f"\nimage -> nearest stored captions: {probe.relative_to(corpus)}")
        for hit in searcher.captions(probe, k=3):
            echo(f"  {hit.score:6.3f}  “{hit.caption}”")
        echo(f"\nzero-shot labels for {probe.relative_to(corpus)}")
        for label in searcher.labels(probe, ["circle", "square", "triangle", "star"]):
            echo(f"  {label.probability:6.1%}  {label.label}")
    echo(f"\n{found} of {existing} matching images were ranked ahead of every other image.")
    return found, existing
