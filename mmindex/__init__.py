"""mmindex: turn images and captions into a searchable multimodal LanceDB index.

    import mmindex
    report = mmindex.index("photos/", db="./mmindex.lancedb")          # embed, store, index
    hits = mmindex.open_searcher("./mmindex.lancedb").text("a red bicycle", k=5)

The names below are the public surface; submodules hold the parts (sources, images, embed, store,
search, pipeline) for callers who want to swap one. Importing mmindex is cheap: heavy modules load
on first use, and the library never imports Prefect.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "index": "mmindex.api",
    "open_searcher": "mmindex.api",
    "caption": "mmindex.api",
    "Captioner": "mmindex.caption",
    "Settings": "mmindex.config",
    "ClipEmbedder": "mmindex.embed",
    "Store": "mmindex.store",
    "Searcher": "mmindex.search",
    "Hit": "mmindex.search",
    "LabelScore": "mmindex.search",
    "run_index": "mmindex.pipeline",
    "IndexOptions": "mmindex.pipeline",
    "RunReport": "mmindex.report",
    "open_source": "mmindex.sources",
    "ScanFilter": "mmindex.sources",
    "SourceItem": "mmindex.sources",
    "MMIndexError": "mmindex.errors",
    "ConfigError": "mmindex.errors",
}

__all__ = [
    "__version__",
    "index",
    "caption",
    "Captioner",
    "open_searcher",
    "Settings",
    "ClipEmbedder",
    "Store",
    "Searcher",
    "Hit",
    "LabelScore",
    "run_index",
    "IndexOptions",
    "RunReport",
    "open_source",
    "ScanFilter",
    "SourceItem",
    "MMIndexError",
    "ConfigError",
]

if TYPE_CHECKING:
    from mmindex.api import caption, index, open_searcher
    from mmindex.caption import Captioner
    from mmindex.config import Settings
    from mmindex.embed import ClipEmbedder
    from mmindex.errors import ConfigError, MMIndexError
    from mmindex.pipeline import IndexOptions, run_index
    from mmindex.report import RunReport
    from mmindex.search import Hit, LabelScore, Searcher
    from mmindex.sources import ScanFilter, SourceItem, open_source
    from mmindex.store import Store


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mmindex' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
