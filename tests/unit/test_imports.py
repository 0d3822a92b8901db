"""The library stays importable without Prefect and cheap to import; its public surface is pinned."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import mmindex

PUBLIC = {
    "__version__",
    "connect",
    "ImageIndex",
    "Results",
    "Duplicates",
    "index",
    "caption",
    "maintain",
    "thumbnails",
    "ThumbnailJob",
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


def test_no_public_name_is_also_a_submodule() -> None:
    """Importing a submodule rebinds the package attribute of its name: `mmindex.caption(...)` once
    failed with "'module' object is not callable" after the indexer imported mmindex.caption."""
    for name in PUBLIC:
        assert importlib.util.find_spec(f"mmindex.{name}") is None, name
    code = (
        "import importlib, pkgutil, mmindex\n"
        "for m in pkgutil.walk_packages(mmindex.__path__, 'mmindex.'): importlib.import_module(m.name)\n"
        "import mmindex.flows.index, mmindex.tasks.index\n"
        "print(all(callable(getattr(mmindex, n)) for n in mmindex.__all__ if n != '__version__'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"


def test_the_public_names_work(tmp_path: Path) -> None:
    """Each public name does its job in a small way (the README examples use them fully)."""
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "photos" / "red.png")
    source = mmindex.open_source(str(tmp_path / "photos"), scan_filter=mmindex.ScanFilter(include=("*.png",)))
    items = [item for item in source.scan() if isinstance(item, mmindex.SourceItem)]
    assert [item.key for item in items] == ["red.png"]
    store = mmindex.Store(str(tmp_path / "db"))
    assert not store.exists()
    assert mmindex.Settings.from_env(db="x").db == "x"
    assert mmindex.IndexOptions(batch_size=4).batch_size == 4
    assert mmindex.RunReport(kind="index").to_dict()["indexed"] == 0
    assert mmindex.IndexJob(source="photos").kind == "index"
    assert mmindex.CaptionJob(limit=2).limit == 2 and mmindex.MaintainJob().retention == "7d"
    assert mmindex.Hit("i", "u", "k", None, 0.5).to_dict()["score"] == 0.5
    assert mmindex.LabelScore("cat", 0.3, 0.9).to_dict()["label"] == "cat"
    assert issubclass(mmindex.ConfigError, mmindex.MMIndexError)
    assert len(mmindex.Results.empty()) == 0 and len(mmindex.Duplicates([], {})) == 0
    with pytest.raises(mmindex.MMIndexError, match="no table"):
        mmindex.connect(str(tmp_path / "db"))
    assert mmindex.ImageIndex.search.__doc__
    with pytest.raises(mmindex.ConfigError, match="no table"):
        mmindex.maintain(db=str(tmp_path / "db"))  # run_job refuses a table that does not exist
    with pytest.raises(mmindex.ConfigError, match="does not exist"):
        mmindex.run_job(mmindex.IndexJob(source=str(tmp_path / "missing")))
    for runner in (mmindex.index, mmindex.caption, mmindex.run_index, mmindex.open_searcher):
        assert callable(runner)  # run for real by tests/integration/test_readme.py
    assert mmindex.Searcher(store).store is store
    assert mmindex.ClipEmbedder.load("toy-clip").dim == 64
    assert mmindex.Captioner.load("toy-captioner").family == "blip"
    assert "maintenance" in mmindex.MaintenanceReport.__name__.lower()
