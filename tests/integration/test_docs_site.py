"""The documentation site builds strictly (a broken link, anchor or docstring reference fails), and its
generated references cover every command and every job function."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return out


def test_the_cli_reference_documents_every_command_and_option(site: Path) -> None:
    import typer.main

    from mmindex.cli import app

    page = (site / "reference" / "cli" / "index.html").read_text()
    group = typer.main.get_command(app)
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        assert f"mmindex {name}</h2>" in page or f'id="mmindex-{name}"' in page, name
        for parameter in command.params:
            for flag in parameter.opts:
                if flag.startswith("-"):
                    assert flag in page, f"mmindex {name} {flag}"


def test_the_api_reference_documents_every_job_function(site: Path) -> None:
    from mmindex.run import JOB_KINDS

    page = (site / "reference" / "api" / "index.html").read_text()
    for name in JOB_KINDS:
        assert f'id="mmindex.api.{name}"' in page, name
    assert 'id="mmindex.query.handle.ImageIndex.search"' in page


def test_the_pictures_are_drawn_where_they_say_the_most(site: Path) -> None:
    """The layers and a run's stages and commit point are mermaid diagrams in the built pages."""
    for page in ("concepts/architecture", "concepts/runs", "concepts/runners"):
        html = (site / page / "index.html").read_text()
        assert re.search(r'class="mermaid"', html), page
