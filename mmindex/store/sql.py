"""Small SQL helpers for LanceDB filters: quoting and IN lists."""

from __future__ import annotations

from collections.abc import Sequence


def sql_string(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def sql_literal(value: str | bool | int) -> str:
    """A string, boolean or integer as a SQL literal."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    return sql_string(value)


def sql_in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(sql_string(v) for v in values)})"
