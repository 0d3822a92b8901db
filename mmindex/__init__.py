"""mmindex: turn images and captions into a searchable multimodal LanceDB index.

    import mmindex
    report = mmindex.index("photos/", db="./mmindex.lancedb")          # embed, store, index
    mmindex.connect("./mmindex.lancedb").search("a red bicycle", k=5)   # a thumbnail grid in Jupyter

The names below are the public surface: the jobs as functions (index, caption, maintain) and as
typed specs (IndexJob, ... run by run_job), and the parts for callers who want to swap one (sources,
embedder, captioner, store, searcher; see docs/concepts/architecture.md). Importing mmindex is cheap: heavy
modules load on first use, and the library never imports Prefect.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "connect": "mmindex.query.handle",
    "ImageIndex": "mmindex.query.handle",
    "Results": "mmindex.query.results",
    "SearchRequest": "mmindex.query.request",
    "Duplicates": "mmindex.query.results",
    "index": "mmindex.api",
    "open_searcher": "mmindex.query.search",
    "caption": "mmindex.api",
    "maintain": "mmindex.api",
    "thumbnails": "mmindex.api",
    "reembed": "mmindex.api",
    "finetune": "mmindex.api",
    "generate": "mmindex.api",
    "GenerateJob": "mmindex.jobs.spec",
    "FinetuneJob": "mmindex.jobs.spec",
    "FinetuneReport": "mmindex.finetuning.report",
    "ThumbnailJob": "mmindex.jobs.spec",
    "ReembedJob": "mmindex.jobs.spec",
    "IndexJob": "mmindex.jobs.spec",
    "CaptionJob": "mmindex.jobs.spec",
    "MaintainJob": "mmindex.jobs.spec",
    "run_job": "mmindex.run",
    "MaintenanceReport": "mmindex.store.upkeep",
    "Captioner": "mmindex.models.captioner",
    "Settings": "mmindex.config",
    "ClipEmbedder": "mmindex.models.clip",
    "Store": "mmindex.store.reader",
    "Searcher": "mmindex.query.search",
    "Hit": "mmindex.query.results",
    "LabelScore": "mmindex.query.results",
    "run_index": "mmindex.ingest.pipeline",
    "IndexOptions": "mmindex.ingest.pipeline",
    "RunReport": "mmindex.report",
    "open_source": "mmindex.ingest.sources",
    "ScanFilter": "mmindex.ingest.sources",
    "SourceItem": "mmindex.ingest.sources",
    "MMIndexError": "mmindex.errors",
    "ConfigError": "mmindex.errors",
}

__all__ = [
    "__version__",
    "connect",
    "ImageIndex",
    "Results",
    "SearchRequest",
    "Duplicates",
    "index",
    "caption",
    "maintain",
    "thumbnails",
    "reembed",
    "ThumbnailJob",
    "ReembedJob",
    "finetune",
    "FinetuneJob",
    "generate",
    "GenerateJob",
    "FinetuneReport",
    "IndexJob",
    "CaptionJob",
    "MaintainJob",
    "run_job",
    "MaintenanceReport",
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
    from mmindex.api import caption, finetune, generate, index, maintain, reembed, thumbnails
    from mmindex.config import Settings
    from mmindex.errors import ConfigError, MMIndexError
    from mmindex.finetuning.report import FinetuneReport
    from mmindex.ingest.pipeline import IndexOptions, run_index
    from mmindex.ingest.sources import ScanFilter, SourceItem, open_source
    from mmindex.jobs.spec import (
        CaptionJob,
        FinetuneJob,
        GenerateJob,
        IndexJob,
        MaintainJob,
        ReembedJob,
        ThumbnailJob,
    )
    from mmindex.models.captioner import Captioner
    from mmindex.models.clip import ClipEmbedder
    from mmindex.query.handle import ImageIndex, connect
    from mmindex.query.request import SearchRequest
    from mmindex.query.results import Duplicates, Hit, LabelScore, Results
    from mmindex.query.search import Searcher, open_searcher
    from mmindex.report import RunReport
    from mmindex.run import run_job
    from mmindex.store.reader import Store
    from mmindex.store.upkeep import MaintenanceReport


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mmindex' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
