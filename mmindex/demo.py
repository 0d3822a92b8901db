"""The demo's corpus and queries: generated shapes (with a few broken files), and results a person can
judge at a glance, since every sample's file name says what it shows."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from mmindex.query.search import Searcher
from mmindex.store.reader import Store
from mmindex.toy.shapes import COLOURS, NEW_COLOURS, write_corpus

DEMO_QUERIES = ["a red circle", "a blue star", "a yellow triangle", "a green square", "a purple shape"]
NEW_COLOUR_QUERIES = ["a cyan circle", "a magenta star", "a brown square", "a cyan triangle"]
FINETUNE_OPTIONS = {"epochs": 8, "lr": 5e-4, "batch_size": 32, "holdout": 0.2}  # sized for the toy CLIP


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


def prepare_finetune_corpus(directory: Path, images: int = 288) -> Path:
    """Shapes in nine colours, three of which (brown, cyan, magenta) the toy CLIP has never seen."""
    corpus = directory / "finetune-corpus"
    if not corpus.exists():
        colours = (*COLOURS, *NEW_COLOURS)
        write_corpus(corpus, images, seed=3, captioned_fraction=1.0, size_range=(64, 160), colours=colours)
    return corpus


def show_new_colour_queries(
    before: Searcher, after: Searcher, echo: Callable[[str], None] = print
) -> tuple[int, int]:
    """Top hits for queries naming the new colours, with the base and the fine-tuned model; returns
    the right hits among the top 4 (before, after) over all queries."""
    right = [0, 0]
    for query in NEW_COLOUR_QUERIES:
        echo(f'\ntext -> images: "{query}"   base model | fine-tuned')
        rows = [searcher.text(query, k=4) for searcher in (before, after)]
        for rank, (old, new) in enumerate(zip(*rows, strict=False), 1):
            marks = [_matches(hit.key, query) for hit in (old, new)]
            right = [count + mark for count, mark in zip(right, marks, strict=True)]
            cells = [
                f"{'✓' if mark else '✗'} {hit.key.rsplit('/', 1)[-1]:<26}"
                for hit, mark in zip((old, new), marks, strict=True)
            ]
            echo(f"  {rank}. {cells[0]} | {cells[1]}")
    total = 4 * len(NEW_COLOUR_QUERIES)
    echo(
        f"\nright images in the top 4: {right[0]} of {total} before, {right[1]} of {total} after fine-tuning"
    )
    return right[0], right[1]


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


DEMO_PROMPTS = ("a red star", "a blue triangle")


def show_generated(store: Store, prompts: Sequence[str], echo: Callable[[str], None] = print) -> int:
    """Text search for the prompts among generated images: the images made for each prompt should come
    first. Returns how many of the top hits were made for their query."""
    from mmindex.query.handle import ImageIndex

    index = ImageIndex(store)
    right = 0
    for prompt in prompts:
        hits = index.search(prompt, k=2, synthetic="only")
        echo(f'  "{prompt}" among generated images:')
        for hit in hits:
            made_for = hit.caption or "?"
            right += made_for == prompt
            echo(f"    {hit.score:.3f}  {hit.key}  (made for {made_for!r})")
    return right
