"""Search results: the hits and label scores that queries return."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Hit:
    id: str
    uri: str
    key: str
    caption: str | None
    score: float
    caption_source: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float
    probability: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def hit_from_row(row: dict[str, Any], score: float) -> Hit:
    return Hit(
        id=row["id"],
        uri=row["uri"],
        key=row["key"],
        caption=row.get("caption"),
        score=score,
        caption_source=row.get("caption_source"),
        width=row.get("width"),
        height=row.get("height"),
        format=row.get("format"),
    )
