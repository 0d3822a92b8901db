"""`mmindex.connect()`: the notebook handle on a real table built by the pipeline with the toy CLIP."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mmindex
from mmindex.errors import ConfigError, TableError
from mmindex.query.handle import ImageIndex


@pytest.fixture(scope="module")
def idx(shapes_db: Path) -> ImageIndex:
    return mmindex.connect(str(shapes_db))


def kind_of(key: str) -> str:
    return "-".join(Path(key).stem.split("-")[1:])


def row_of(idx: ImageIndex, kind: str) -> dict[str, object]:
    rows = idx.table.search().select(["id", "uri", "key"]).limit(None).to_arrow().to_pylist()
    return next(row for row in sorted(rows, key=lambda r: r["key"]) if kind_of(str(row["key"])) == kind)


def test_text_search_returns_a_result_set_that_converts(idx: ImageIndex) -> None:
    results = idx.search("a blue star", k=3)
    assert [kind_of(hit.key) for hit in results] == ["blue-star"] * 3
    frame = results.to_pandas()
    assert list(frame["key"]) == [hit.key for hit in results]
    assert frame["score"].is_monotonic_decreasing
    arrow = results.to_arrow()
    assert "image_embedding" not in arrow.column_names and "thumbnail" not in arrow.column_names  # lean
    assert "fingerprint" not in arrow.column_names
    asked = idx.search("a blue star", k=3, columns=["thumbnail", "modified_at"]).to_arrow()
    assert {"thumbnail", "modified_at"} <= set(asked.column_names) and asked["id"] == arrow["id"]
    assert "fingerprint" in idx.search("a blue star", k=1, columns=["*"]).to_arrow().column_names
    with pytest.raises(ConfigError, match="no column 'image_embedding' to return"):
        idx.search("a blue star", columns=["image_embedding"])
    # scores are exact cosines of the stored vectors, without reading them
    vectors = np.stack([idx.embedding(hit.id) for hit in results])
    query = idx.searcher.embedder.embed_texts(["a blue star"])[0]
    assert np.allclose([hit.score for hit in results], vectors @ query, atol=1e-5)
    assert results.to_list()[0] == results[0].to_dict() and set(results.to_list()[0]) >= {"id", "score"}
    assert "blue-star" in repr(results)


def test_results_render_as_a_grid_of_stored_thumbnails(idx: ImageIndex) -> None:
    results = idx.search("a green circle", k=4)
    assert "thumbnail" not in results.to_arrow().column_names  # read when the grid is drawn
    page = results._repr_html_()
    images = re.findall(r'<img src="data:image/webp;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 4
    import base64

    thumbnail = Image.open(io.BytesIO(base64.b64decode(images[0])))
    assert thumbnail.format == "WEBP" and max(thumbnail.size) <= 256
    assert results[0].key in page and f"{results[0].score:.3f}" in page


def test_paging_with_offset_continues_the_ranking(idx: ImageIndex) -> None:
    first = idx.search("a red circle", k=6)
    second = idx.search("a red circle", k=3, offset=3)
    assert [hit.id for hit in second] == [hit.id for hit in first][3:]


def test_image_vector_and_similar_queries(idx: ImageIndex) -> None:
    probe = row_of(idx, "orange-triangle")
    by_image = idx.search(image=str(probe["uri"]), k=3)
    assert by_image[0].id == probe["id"] and by_image[0].score == pytest.approx(1.0, abs=1e-3)
    by_vector = idx.search(vector=idx.embedding(str(probe["id"])), k=3)
    assert [hit.id for hit in by_vector] == [hit.id for hit in by_image]
    similar = idx.similar(str(probe["id"]), k=3)
    assert probe["id"] not in [hit.id for hit in similar] and len(similar) == 3
    assert kind_of(similar[0].key) == "orange-triangle"


def test_more_like_this_pages_walk_the_ranking_without_repeats_or_gaps(idx: ImageIndex) -> None:
    probe = str(row_of(idx, "red-square")["id"])  # a file with two exact copies in the table
    whole = [hit.id for hit in idx.similar(probe, k=len(idx))]
    assert probe not in whole and len(whole) == len(idx) - 1
    walked = [hit.id for offset in range(0, len(idx), 7) for hit in idx.similar(probe, k=7, offset=offset)]
    assert walked == whole


def test_empty_pages_are_empty_results_not_errors(idx: ImageIndex) -> None:
    probe = row_of(idx, "blue-circle")
    nothing = "width < 0"
    assert len(idx.similar(str(probe["id"]), k=5, where=nothing)) == 0
    assert len(idx.similar(str(probe["id"]), k=5, offset=len(idx))) == 0
    assert len(idx.captions_for(str(probe["uri"]), k=3, where=nothing)) == 0
    for mode in ("vector", "text", "hybrid"):
        assert len(idx.search("a blue circle", mode=mode, k=5, where=nothing)) == 0
        assert len(idx.search("a blue circle", mode=mode, k=5, offset=len(idx))) == 0


def test_min_score_cuts_the_ranking_and_order_by_orders_the_relevant_hits(idx: ImageIndex) -> None:
    ranking = idx.search("a red circle", k=60)
    cutoff = ranking[7].score
    relevant = [hit.id for hit in ranking if hit.score >= cutoff]
    above = idx.search("a red circle", k=60, min_score=cutoff)
    assert [hit.id for hit in above] == relevant and all(hit.score >= cutoff for hit in above)

    by_key = idx.search("a red circle", k=60, min_score=cutoff, order_by="key desc")
    assert [hit.key for hit in by_key] == sorted((hit.key for hit in above), reverse=True)
    pages = [
        idx.search("a red circle", k=3, offset=n, min_score=cutoff, order_by="key desc") for n in (0, 3, 6, 9)
    ]
    walked = [hit.id for page in pages for hit in page]
    assert walked == [hit.id for hit in by_key]

    page = idx.search("a red circle", k=6, offset=6, order_by="width")  # each page of the ranking, ordered
    expected = sorted(ranking.to_list()[6:12], key=lambda hit: hit["width"])  # stable: ties keep score order
    assert [hit.id for hit in page] == [hit["id"] for hit in expected]
    words = idx.search("red", mode="text", k=5, order_by="key")
    assert [hit.key for hit in words] == sorted(hit.key for hit in idx.search("red", mode="text", k=5))


@pytest.mark.parametrize(
    ("controls", "message"),
    [({"order_by": "nosuch"}, "cannot order by 'nosuch'"), ({"order_by": "thumbnail"}, "cannot order by"),
     ({"order_by": "key sideways"}, "'COLUMN asc'"), ({"min_score": 1.5}, "between -1 and 1"),
     ({"min_score": 0.2, "mode": "text"}, "bm25 scores have no fixed scale")],
)  # fmt: skip
def test_relevance_controls_are_checked(idx: ImageIndex, controls: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        idx.search("a red circle", **controls)  # type: ignore[arg-type]


def test_full_text_hybrid_captions_and_labels(idx: ImageIndex) -> None:
    text = idx.search("yellow", mode="text", k=3)
    assert text.score_kind == "bm25" and all("yellow" in (hit.caption or "") for hit in text)
    hybrid = idx.search("a yellow square", mode="hybrid", k=3)
    assert hybrid.score_kind == "rrf" and kind_of(hybrid[0].key) == "yellow-square"
    probe = row_of(idx, "purple-star")
    assert idx.captions_for(str(probe["uri"]), k=2)[0].caption == "a purple star"
    assert idx.labels(str(probe["uri"]), ["circle", "star"])[0].label == "star"


def test_a_where_filter_applies(idx: ImageIndex) -> None:
    results = idx.search("a red circle", k=5, where="format = 'PNG'")
    assert len(results) == 5 and {hit.format for hit in results} == {"PNG"}


def test_bad_queries_get_clear_errors(idx: ImageIndex) -> None:
    with pytest.raises(ConfigError, match="768 dimensions.*holds 64-d|768 dimensions"):
        idx.search(vector=np.ones(768, dtype=np.float32))
    with pytest.raises(ConfigError, match="exactly one"):
        idx.search("a", image="x.jpg")
    with pytest.raises(ConfigError, match="mode"):
        idx.search("a red circle", mode="fuzzy")
    with pytest.raises(ConfigError, match="k must be"):
        idx.search("a red circle", k=10**9)
    with pytest.raises(TableError, match="no row"):
        idx.similar("0" * 32)


def test_duplicates_finds_exact_copies_and_near_groups(idx: ImageIndex) -> None:
    found = idx.duplicates(threshold=0.97)
    exact = [group for group in found if group.kind == "exact"]
    assert len(exact) == 1 and len(exact[0].ids) == 3
    assert sum(key.startswith("copies/") for key in exact[0].keys) == 2
    near = [group for group in found if group.kind == "near"]
    vectors = {row_id: idx.embedding(row_id) for group in near for row_id in group.ids}
    for group in near:  # every member is linked to another member above the threshold
        for row_id in group.ids:
            best = max(float(vectors[row_id] @ vectors[other]) for other in group.ids if other != row_id)
            assert best >= 0.97 - 1e-5
    in_near = [row_id for group in near for row_id in group.ids if row_id in exact[0].ids]
    assert len(in_near) <= 1  # exact copies count once
    assert found.to_pandas().groupby("group").size().min() >= 2
    assert "<img" in found._repr_html_()
    assert len(idx.duplicates(threshold=1.0)) >= 1  # exact groups at least


def test_queries_can_run_an_int8_model_and_bad_settings_are_refused(shapes_db: Path) -> None:
    fast = mmindex.connect(str(shapes_db), quantize="int8")
    assert [kind_of(hit.key) for hit in fast.search("a green star", k=2)] == ["green-star"] * 2
    assert "int8" in fast.searcher.embedder.compute
    with pytest.raises(ConfigError, match="quantize"):
        mmindex.connect(str(shapes_db), quantize="int4")
