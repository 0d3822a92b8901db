"""The library stays importable without Prefect and cheap to import; its public surface is pinned."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import mmindex


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


def typed_imports() -> dict[str, str]:
    """What `mmindex/__init__.py` imports under `if TYPE_CHECKING:` (what type checkers and IDEs see)."""
    tree = ast.parse(Path(mmindex.__file__).read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING")
    return {
        alias.name: statement.module or ""
        for statement in block.body
        if isinstance(statement, ast.ImportFrom)
        for alias in statement.names
    }


def test_the_public_surface_is_one_list_kept_in_step() -> None:
    """`__all__`, the lazy-import table and the typed imports name the same things from the same
    modules; each resolves there, is defined in mmindex and says what it is."""
    assert len(mmindex.__all__) == len(set(mmindex.__all__))
    assert set(mmindex.__all__) == {"__version__", *mmindex._EXPORTS}
    assert typed_imports() == mmindex._EXPORTS
    for name, module in mmindex._EXPORTS.items():
        value = getattr(mmindex, name)
        assert value is getattr(importlib.import_module(module), name)
        assert value.__module__.startswith("mmindex."), name
        assert (value.__doc__ or "").strip(), f"mmindex.{name} has no docstring"
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        mmindex.nothing_here  # noqa: B018


def test_no_public_name_is_also_a_submodule() -> None:
    """Importing a submodule rebinds the package attribute of its name: `mmindex.caption(...)` once
    failed with "'module' object is not callable" after the indexer imported mmindex.caption."""
    for name in mmindex.__all__:
        assert importlib.util.find_spec(f"mmindex.{name}") is None, name
    code = (
        "import importlib, pkgutil, mmindex\n"
        "for m in pkgutil.walk_packages(mmindex.__path__, 'mmindex.'): importlib.import_module(m.name)\n"
        "import mmindex.flows.jobs, mmindex.tasks.index\n"
        "print(all(callable(getattr(mmindex, n)) for n in mmindex.__all__ if n != '__version__'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "True"


def test_the_public_names_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The public parts, put together as a notebook would: a source, the toy embedder, a store, a run
    and a search over it (the examples of README and docs/ use them fully)."""
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "photos" / "red.png")
    Image.new("RGB", (40, 30), (10, 10, 200)).save(tmp_path / "photos" / "blue.jpg")
    source = mmindex.open_source(str(tmp_path / "photos"), scan_filter=mmindex.ScanFilter(include=("*.png",)))
    items = [item for item in source.scan() if isinstance(item, mmindex.SourceItem)]
    assert [item.key for item in items] == ["red.png"]  # the filter left the JPEG out

    monkeypatch.setenv("MMINDEX_DB", str(tmp_path / "from-env"))
    assert mmindex.Settings.from_env().db == str(tmp_path / "from-env")
    assert mmindex.Settings.from_env(db=str(tmp_path / "db")).db == str(tmp_path / "db")  # overrides win
    store = mmindex.Store(str(tmp_path / "db"))
    assert not store.exists()
    with pytest.raises(mmindex.MMIndexError, match="no table"):
        mmindex.connect(str(tmp_path / "db"))
    with pytest.raises(mmindex.ConfigError, match="no table"):
        mmindex.maintain(db=str(tmp_path / "db"))  # run_job refuses a table that does not exist
    with pytest.raises(mmindex.ConfigError, match="does not exist"):
        mmindex.run_job(mmindex.IndexJob(source=str(tmp_path / "missing")))

    embedder = mmindex.ClipEmbedder.load("toy-clip")
    report = mmindex.run_index(source, embedder, store, mmindex.IndexOptions(batch_size=4))
    assert isinstance(report, mmindex.RunReport) and report.indexed == store.info().rows == 1
    assert mmindex.RunReport.from_dict(report.to_dict()).indexed == 1
    hits = mmindex.Searcher(store).text("a red square", k=5)
    assert [hit.key for hit in hits] == ["red.png"] and -1.0 <= hits[0].to_dict()["score"] <= 1.0
    assert isinstance(hits[0], mmindex.Hit)
    results = mmindex.connect(str(tmp_path / "db")).search("a red square", k=5)
    assert isinstance(results, mmindex.Results) and results.to_pandas()["key"].tolist() == ["red.png"]
    labels = mmindex.Searcher(store).labels(tmp_path / "photos" / "red.png", ["red", "blue"])
    assert isinstance(labels[0], mmindex.LabelScore) and abs(sum(s.probability for s in labels) - 1) < 1e-5
    assert mmindex.MaintainJob().kind == "maintain" and mmindex.CaptionJob().kind == "caption"
    assert mmindex.Captioner.load("toy-captioner").caption_images([Image.new("RGB", (32, 32))])[0]


def test_a_text_search_in_a_fresh_process_never_imports_transformers(shapes_db: Path) -> None:
    """`mmindex search "TEXT"` without a server: the CLIP text tower runs in plain torch, since
    transformers' import graph alone took longer than the whole rest of a cold query."""
    statement = (
        "from mmindex.cli import main; sys.argv = ['mmindex', 'search', 'a red circle', '--no-server', "
        f"'--db', {str(shapes_db)!r}, '-k', '2', '--json']\n"
        "try:\n    main()\nexcept SystemExit as exit:\n    assert not exit.code, exit.code"
    )
    code = f"import sys, json\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    hits, loaded = output.strip().splitlines()[:-1], set(json.loads(output.strip().splitlines()[-1]))
    assert "red" in "".join(hits) and "torch" in loaded  # the query ran, with the model
    assert not any(name == "transformers" or name.startswith("transformers.") for name in loaded)
