"""A search request is checked once, when it is made: the rules every entry point shares."""

from __future__ import annotations

import math

import pytest

from mmindex.errors import ConfigError
from mmindex.query.request import SearchRequest


@pytest.mark.parametrize(
    ("keywords", "message"),
    [
        ({}, r"give exactly one query: a text, an image or a vector \(got none\)"),
        ({"text": "a", "image": b"x"}, r"exactly one query.*\(got text, image\)"),
        ({"text": "   "}, "the text query is empty"),
        ({"text": "a", "mode": "fuzzy"}, "mode 'fuzzy' is not one of: vector, text, hybrid"),
        ({"image": b"x", "mode": "text"}, "searches caption text: give a text query"),
        ({"text": "a", "k": 0}, "k must be a whole number from 1"),
        ({"text": "a", "k": True}, "k must be a whole number"),
        ({"text": "a", "offset": -1}, "offset must be a whole number from 0"),
        ({"text": "a", "synthetic": "sometimes"}, "synthetic must be one of include, exclude, only"),
        ({"text": "a", "min_score": 1.5}, "min_score is a cosine between -1 and 1"),
        ({"text": "a", "min_score": math.nan}, "min_score is a cosine between -1 and 1"),
        ({"text": "a", "mode": "hybrid", "min_score": 0.2}, "rrf scores have no fixed scale"),
        ({"text": "a", "order_by": "key sideways"}, "order_by is 'COLUMN', 'COLUMN asc' or 'COLUMN desc'"),
        ({"text": "a", "generation": " "}, "the generation's name is empty"),
        ({"image": b"x", "imagine": 2}, "imagine makes images for a text query"),
        ({"text": "a", "imagine": 2, "distinct": True}, "do not apply to imagined"),
    ],
)
def test_a_request_that_cannot_be_answered_is_refused_when_made(
    keywords: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        SearchRequest(**keywords)  # type: ignore[arg-type]


def test_a_request_travels_to_a_server_as_its_query_parameters() -> None:
    request = SearchRequest(
        text="a red circle", mode="vector", k=5, offset=10, where=" ", distinct=True, min_score=0.25,
        order_by="modified_at desc", generation="tuned",
    )  # fmt: skip
    assert request.where is None  # a blank filter is no filter
    assert request.to_params() == {
        "k": "5", "offset": "10", "synthetic": "include", "min_score": "0.25", "order_by": "modified_at desc",
        "generation": "tuned", "distinct": "true", "q": "a red circle", "mode": "vector",
    }  # fmt: skip
    with pytest.raises(ConfigError, match="run in this process"):
        SearchRequest(vector=[0.0, 1.0]).to_params()
    assert SearchRequest(image=b"jpeg").query == "image"
