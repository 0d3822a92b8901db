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


def test_constant_columns_are_learned_not_read_and_follow_new_versions(
    shapes_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    import time

    from mmindex.query import facts as facts_module

    monkeypatch.setattr(facts_module, "CONSTANTS_MIN_ROWS", 0)  # learnt at 1M rows, where they cost
    db = tmp_path / "db"
    shutil.copytree(shapes_db, db)
    store = Store(str(db))
    table = store.lancedb_table()
    stored = {row["id"]: row for row in table.search().limit(None).to_arrow().to_pylist()}
    searcher = Searcher(store, ClipEmbedder.load("toy-clip"))

    def hits_match_the_rows(hits: list) -> None:  # type: ignore[type-arg]
        for hit in hits:
            assert (hit.synthetic, hit.format, hit.width) == (
                stored[hit.id]["synthetic"],
                stored[hit.id]["format"],
                stored[hit.id]["width"],
            )

    for _ in range(2):  # the second query at a version starts learning in the background
        searcher.text("a red circle", k=5)
    deadline = time.monotonic() + 30
    while not searcher.facts().constants and time.monotonic() < deadline:
        time.sleep(0.05)
    facts = searcher.facts()
    assert facts.constants.get("synthetic") is False  # no generated images among the shapes
    assert "format" not in facts.constants and "id" not in facts.constants  # JPEG and PNG; ids differ
    assert "synthetic" not in facts.stored_columns(facts.result_columns())
    hits = searcher.text("a red circle", k=5)
    hits_match_the_rows(hits)
    hits_match_the_rows(searcher.fulltext("red", k=5))
    every_column = searcher.text("a red circle", k=5, columns=["*"]).to_arrow().column_names
    assert every_column[:3] == ["id", "uri", "key"] and "synthetic" in every_column

    changed = hits[0].id
    table.update(where=f"id = '{changed}'", values={"synthetic": True})  # another writer's commit
    stored[changed]["synthetic"] = True
    assert "synthetic" not in searcher.facts().constants
    again = searcher.text("a red circle", k=5)
    assert again[0].id == changed and again[0].synthetic is True
    hits_match_the_rows(again)
    assert "synthetic" not in searcher.learn_facts().constants
