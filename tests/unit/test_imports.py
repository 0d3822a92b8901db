"""The library stays importable without Prefect and cheap to import; its public surface is pinned."""

from __future__ import annotations

import json
import subprocess
import sys

import mmindex

PUBLIC = {
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
}


def modules_after(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(output))


def test_import_mmindex_pulls_in_neither_prefect_nor_torch() -> None:
    loaded = modules_after("import mmindex")
    assert not any(name == "prefect" or name.startswith("prefect.") for name in loaded)
    assert "torch" not in loaded


def test_the_library_modules_never_import_prefect() -> None:
    """Every module of the library (all of mmindex/, walked) imports without pulling in Prefect, or the
    flows and tasks that wrap it."""
    statement = (
        "import importlib, pkgutil, mmindex; "
        "[importlib.import_module(m.name) for m in pkgutil.walk_packages(mmindex.__path__, 'mmindex.')]"
    )
    loaded = modules_after(statement)
    assert "mmindex.ingest.pipeline" in loaded and "mmindex.store.writer" in loaded  # the walk happened
    assert not any(name == "prefect" or name.startswith("prefect.") for name in loaded)
    wrappers = ("mmindex.flows", "mmindex.tasks", "mmindex.deployments")
    assert not any(name.startswith(wrappers) for name in loaded)


def test_public_surface_is_pinned() -> None:
    assert set(mmindex.__all__) == PUBLIC == {"__version__", *mmindex._EXPORTS}
    for name in PUBLIC - {"__version__"}:
        assert getattr(mmindex, name) is not None
