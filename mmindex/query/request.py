"""One search, whoever asks: `SearchRequest` holds everything a search takes, and building one is its
one validation. The command line, the search server and `ImageIndex.search` all build a request and
hand it to `ImageIndex.execute` (the server with its own batching engine underneath), so the rules
are the same everywhere. `mmindex search --server` sends it over HTTP with `to_params()`.

Importing this module is cheap: `mmindex search` builds a request before it knows whether a running
server will answer it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mmindex.errors import ConfigError

SEARCH_MODES = ("vector", "text", "hybrid")  # CLIP similarity, BM25 over captions, both fused by rank
SYNTHETIC_CHOICES = ("include", "exclude", "only")
MAX_K = 10_000  # results per query
MAX_OFFSET = 100_000  # deepest page start
DIRECTIONS = ("asc", "desc")


@dataclass(frozen=True)
class SearchRequest:
    """A search: exactly one query (`text`, `image`: a path, bytes or a PIL image, or `vector`: one from
    the table's model) and how to answer it.

    - `mode`: "vector" (CLIP similarity, the default), "text" (BM25 over captions) or "hybrid" (both,
      fused by reciprocal rank); the last two need a text.
    - `k` results from `offset` on (paging); `where`, an SQL filter over the columns; `synthetic`:
      "include" generated images (the default), "exclude" them or search "only" them; `distinct`
      hides exact copies (the same file content) of a better hit.
    - `min_score` keeps hits whose cosine score is at least that (vector searches); `order_by`
      ("COLUMN", "COLUMN asc" or "COLUMN desc") orders the relevant hits by a column.
    - `generation`: an embedding generation other than the active one, searched with its own model.
    - `imagine=N` (text queries) also makes N images for the text with `generator` and fuses their
      image-to-image results with the text's by rank.
    - `columns`: more columns for the hits ("thumbnail", or "*" for all but the vectors).

    A request that cannot be answered raises ConfigError (one line) when it is made.
    """

    text: str | None = None
    image: Any = None
    vector: Any = None
    mode: str = "vector"
    k: int = 10
    offset: int = 0
    where: str | None = None
    synthetic: str = "include"
    distinct: bool = False
    min_score: float | None = None
    order_by: str | None = None
    generation: str | None = None
    imagine: int = 0
    generator: str | None = None
    columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "columns", tuple(self.columns))
        if self.where is not None and not self.where.strip():
            object.__setattr__(self, "where", None)
        given = [name for name in ("text", "image", "vector") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ConfigError(
                f"give exactly one query: a text, an image or a vector (got {', '.join(given) or 'none'})"
            )
        if self.text is not None and not self.text.strip():
            raise ConfigError("the text query is empty")
        if self.mode not in SEARCH_MODES:
            raise ConfigError(f"mode {self.mode!r} is not one of: {', '.join(SEARCH_MODES)}")
        if self.mode != "vector" and self.text is None:
            raise ConfigError(f"mode {self.mode!r} searches caption text: give a text query")
        _check_int("k", self.k, 1, MAX_K)
        _check_int("offset", self.offset, 0, MAX_OFFSET)
        if self.synthetic not in SYNTHETIC_CHOICES:
            raise ConfigError(
                f"synthetic must be one of {', '.join(SYNTHETIC_CHOICES)}, got {self.synthetic!r}"
            )
        if self.min_score is not None:
            if not (isinstance(self.min_score, int | float) and math.isfinite(self.min_score)):
                raise ConfigError(f"min_score is a cosine between -1 and 1, got {self.min_score!r}")
            if not -1.0 <= self.min_score <= 1.0:
                raise ConfigError(f"min_score is a cosine between -1 and 1, got {self.min_score}")
            if self.mode != "vector":
                kind = "bm25" if self.mode == "text" else "rrf"  # the score kinds of text and hybrid hits
                raise ConfigError(f"min_score is a cosine cutoff; {kind} scores have no fixed scale")
        if self.order_by is not None:
            parts = self.order_by.split()
            if not 1 <= len(parts) <= 2 or (len(parts) == 2 and parts[1].lower() not in DIRECTIONS):
                raise ConfigError(
                    f"order_by is 'COLUMN', 'COLUMN asc' or 'COLUMN desc', got {self.order_by!r}"
                )
        if self.generation is not None and not self.generation.strip():
            raise ConfigError("the generation's name is empty")
        _check_int("imagine", self.imagine, 0, 64)
        if self.imagine:
            if self.text is None:
                raise ConfigError("imagine makes images for a text query: give a text")
            if self.min_score is not None or self.order_by is not None or self.distinct:
                raise ConfigError(
                    "min_score, order_by and distinct do not apply to imagined (fused) searches"
                )

    @property
    def query(self) -> str:
        """The query in a few words, for reports and result sets."""
        if self.text is not None:
            return self.text
        return "image" if self.image is not None else "vector"

    def to_params(self) -> dict[str, str]:
        """The request as the search server's query parameters (a query image travels in the body)."""
        if self.vector is not None or self.imagine:
            raise ConfigError("vector and imagined queries run in this process, not through a server")
        params = {"k": str(self.k), "offset": str(self.offset), "synthetic": self.synthetic}
        optional = {
            "where": self.where,
            "min_score": None if self.min_score is None else repr(self.min_score),
            "order_by": self.order_by,
            "generation": self.generation,
            "distinct": "true" if self.distinct else None,
        }
        params |= {name: value for name, value in optional.items() if value is not None}
        if self.text is not None:
            params |= {"q": self.text, "mode": self.mode}
        return params


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
