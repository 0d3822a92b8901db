"""examples/search.ipynb runs top to bottom in a real Jupyter kernel, and its outputs show the grid."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "search.ipynb"


def test_the_example_notebook_runs_and_shows_thumbnails(tmp_path: Path) -> None:
    shutil.copy(NOTEBOOK, tmp_path / NOTEBOOK.name)
    notebook = nbformat.read(tmp_path / NOTEBOOK.name, as_version=4)
    env_before = dict(os.environ)
    try:
        os.environ.pop("MMINDEX_DB", None)
        os.environ.pop("MMINDEX_TABLE", None)
        NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
        ).execute()
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    html = [
        output["data"]["text/html"]
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if "text/html" in output.get("data", {})
    ]
    grids = [page for page in html if "mmindex-results" in page]
    assert len(grids) >= 4  # search, image search, similar, duplicate groups
    assert grids[0].count('<img src="data:image/webp;base64,') == 8 and "red-circle" in grids[0]
    assert any("exact" in page and "copy-of-red-circle" in page for page in grids)
    assert any("<table" in page and "score" in page for page in html)  # the DataFrame
