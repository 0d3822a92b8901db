"""The untrusted-filter grammar: real filters pass unchanged in meaning, attacks are refused."""

from __future__ import annotations

import pytest

from mmindex.errors import ConfigError
from mmindex.query.filters import check_filter

COLUMNS = ["id", "key", "width", "height", "format", "caption", "caption_source", "indexed_at"]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("width > 500", "width > 500"),
        ("width>=32 and format='PNG'", "width >= 32 AND format = 'PNG'"),
        ("NOT (caption IS NULL) OR key LIKE 'a/%'", "NOT ( caption IS NULL ) OR key LIKE 'a/%'"),
        ("format IN ('PNG', 'JPEG')", "format IN ( 'PNG' , 'JPEG' )"),
        ("width NOT BETWEEN 10 AND 20", "width NOT BETWEEN 10 AND 20"),
        ("caption = 'it''s'", "caption = 'it''s'"),
        ("indexed_at > TIMESTAMP '2026-01-01 00:00:00'", "indexed_at > TIMESTAMP '2026-01-01 00:00:00'"),
        ("WIDTH > 1.5e2", "width > 1.5e2"),
    ],
)
def test_real_filters_pass(where: str, expected: str) -> None:
    assert check_filter(where, COLUMNS) == expected


@pytest.mark.parametrize(
    "where",
    [
        "width > 1; DROP TABLE images",
        "1 = 1",
        "password = 'x'",
        "lower(key) = 'a'",
        "key = 'a' --",
        "width > (SELECT 1)",
        "width > 1 OR",
        "caption LIKE 3",
        "width > 1 /* */",
        'key = "a"',
        "key = 'unterminated",
        "(" * 100 + "width > 1" + ")" * 100,
        "",
        "x" * 3000,
    ],
)
def test_anything_else_is_refused(where: str) -> None:
    with pytest.raises(ConfigError):
        check_filter(where, COLUMNS)


def test_a_refused_character_is_the_one_named() -> None:
    with pytest.raises(ConfigError, match=r"may not use at position 20: '/'"):
        check_filter("key = 'a' AND width / 0 = 1", COLUMNS)


def test_engine_errors_lose_their_source_paths_and_preamble() -> None:
    from mmindex.errors import engine_message

    raw = ValueError(
        "Invalid input, Error resolving filter expression width = 'abc': Invalid user input: Received "
        "literal Utf8(\"abc\") and could not convert to literal of type 'Int32', "
        "/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/lance-datafusion-13.0.0/src/logical_expr.rs:23:88"
    )
    assert (
        engine_message(raw)
        == "Received literal Utf8(\"abc\") and could not convert to literal of type 'Int32'"
    )
