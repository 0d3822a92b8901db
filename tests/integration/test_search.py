"""Search with the toy CLIP, trained on generated shapes: results must mean something."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmindex.errors import ConfigError, TableError
from mmindex.models.clip import ClipEmbedder
from mmindex.query.search import Searcher
from mmindex.store.reader import Store


def shape_of(key: str) -> tuple[str, str]:
    _, colour, shape = Path(key).stem.split("-")
    return colour, shape


def indexed_image(searcher: Searcher, colour: str, shape: str) -> Path:
    uris = searcher.store.lancedb_table().to_arrow().column("uri").to_pylist()
    return Path(next(uri for uri in sorted(uris) if Path(uri).stem.endswith(f"-{colour}-{shape}")))


@pytest.fixture(scope="module")
def searcher(shapes_db: Path) -> Searcher:
    return Searcher(Store(str(shapes_db)), ClipEmbedder.load("toy-clip"))


@pytest.mark.parametrize(
    ("colour", "shape"), [("red", "circle"), ("blue", "star"), ("yellow", "triangle"), ("green", "square")]
)
def test_text_query_ranks_the_matching_shapes_first(searcher: Searcher, colour: str, shape: str) -> None:
    hits = searcher.text(f"a {colour} {shape}", k=3)
    assert [shape_of(hit.key) for hit in hits] == [(colour, shape)] * 3
    assert hits[0].score >= hits[1].score >= hits[2].score


def test_colour_only_query_finds_that_colour(searcher: Searcher) -> None:
    hits = searcher.text("a purple shape", k=6)
    assert sum(shape_of(hit.key)[0] == "purple" for hit in hits) >= 5


def test_image_query_finds_itself_then_its_kind(searcher: Searcher) -> None:
    probe = indexed_image(searcher, "orange", "star")
    hits = searcher.image(probe, k=3)
    assert hits[0].uri == str(probe) and hits[0].score == pytest.approx(1.0, abs=1e-3)
    assert shape_of(hits[1].key) == ("orange", "star")


def test_image_to_captions_returns_distinct_matching_captions(searcher: Searcher) -> None:
    probe = indexed_image(searcher, "blue", "circle")
    captions = searcher.captions(probe, k=3)
    assert captions[0].caption == "a blue circle"
    assert len({hit.caption for hit in captions}) == len(captions)


def test_zero_shot_labels(searcher: Searcher) -> None:
    probe = indexed_image(searcher, "green", "triangle")
    labels = searcher.labels(probe, ["circle", "square", "triangle", "star"])
    assert labels[0].label == "triangle"
    assert sum(label.probability for label in labels) == pytest.approx(1.0)


def test_where_filter_and_k(searcher: Searcher) -> None:
    hits = searcher.text("a red circle", k=4, where="format = 'PNG'")
    assert len(hits) == 4 and all(hit.format == "PNG" for hit in hits)
    with pytest.raises(
        TableError, match="the filter .no_such_column > 3. cannot be applied: .*No field named no_such_column"
    ):
        searcher.text("a red circle", where="no_such_column > 3")
    with pytest.raises(ConfigError):
        searcher.text("a red circle", k=0)


def test_missing_table_is_a_table_error(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="no table 'images'"):
        Searcher(Store(str(tmp_path / "empty-db"))).text("anything")
