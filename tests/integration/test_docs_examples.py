"""Every example of README.md and of the documentation site runs, as a newcomer would run it.

The pages are read in the site's order (README first, then mkdocs.yml's nav). Their Python blocks run
in one fresh process, one after another (like cells of a notebook), in a folder that holds what they name:
`photos/` (a generated corpus) and `query.jpg`. Two things differ from a newcomer's machine, because no
model can be downloaded here: MMINDEX_MODEL / MMINDEX_CAPTION_MODEL name the shipped toy models, and
a block that names the real default CLIP by id loads the toy CLIP instead (the only text changed).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CliRunner

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
REAL_MODEL = "openai/clip-vit-base-patch32"
RUNNABLE = ("python", "bash", "sh", "shell", "console")  # code; text, mermaid and output blocks are not


def pages() -> list[Path]:
    """README, then the site's pages in the order of mkdocs.yml's nav."""
    nav = re.findall(r"^\s*-\s*(?:[^:\n]+:\s*)?([\w/.-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(), re.M)
    return [README, *(ROOT / "docs" / page for page in nav)]


def blocks(language: str, marker: str | None = None) -> list[str]:
    """The fenced blocks of one language across the pages, in order; with `marker`, only the blocks
    right after an `<!-- MARKER: ... -->` comment."""
    lead = rf"^<!-- {marker}: [^>]*-->\n" if marker else r"(?<!-->\n)^"
    pattern = lead + rf"```{language}\n(.*?)^```"
    return [found for page in pages() for found in re.findall(pattern, page.read_text(), flags=re.S | re.M)]


def python_blocks() -> list[str]:
    return blocks("python")


def shell_examples() -> list[str]:
    """The shell blocks marked as examples (the others say why they cannot run here)."""
    return blocks("bash", "example")


def test_every_code_block_runs_or_says_why_not() -> None:
    """A Python block runs unless marked; a shell block runs when marked `example`, and otherwise
    must be marked `not run: REASON` (real weights, a cluster, a server of yours)."""
    unaccounted = []
    for page in pages():
        text = page.read_text()
        for match in re.finditer(r"^```(\w+)\n", text, flags=re.M):
            language = match.group(1)
            if language not in RUNNABLE:
                continue
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marked = re.fullmatch(r"<!-- (example|not run): \S[^>]*-->", before)
            if language == "python" and (marked is None or marked.group(1) == "not run"):
                continue  # runs (python_blocks), or says why not
            if marked is None or (language != "bash" and marked.group(1) == "example"):
                line = text[: match.start()].count("\n") + 1
                unaccounted.append(f"{page.relative_to(ROOT)}:{line} ({language})")
    assert not unaccounted, "code blocks that neither run nor say why not:\n" + "\n".join(unaccounted)


def test_readme_is_a_two_minute_read() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail into docs/"
    assert "mmindex.index(" in "".join(re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M))
    assert re.search(r"^<!-- example: [^>]*-->\n```bash\nmmindex ", README.read_text(), re.M)


def test_every_page_of_the_site_is_in_its_nav() -> None:
    on_disk = {path for path in (ROOT / "docs").rglob("*.md")}
    assert on_disk == set(pages()[1:])


def newcomer_folder(root: Path) -> dict[str, str]:
    """A folder with what the examples name, and the environment that points them at the toy models."""
    from mmindex.toy.shapes import write_corpus

    write_corpus(root / "photos", 24, seed=21)
    shutil.copy(sorted((root / "photos").rglob("*.jpg"))[0], root / "query.jpg")
    return {**os.environ, "MMINDEX_MODEL": "toy-clip", "MMINDEX_CAPTION_MODEL": "toy-captioner"}


def test_every_python_block_runs(tmp_path: Path) -> None:
    env = newcomer_folder(tmp_path)
    script = []
    for number, block in enumerate(python_blocks(), start=1):
        script.append(f"print('--- block {number}', flush=True)")
        script.append(block.replace(REAL_MODEL, "toy-clip"))
    env.pop("PREFECT_API_URL", None)  # the notebook surface must not need Prefect
    result = subprocess.run(
        [sys.executable, "-c", "\n".join(script)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert f"--- block {len(python_blocks())}" in result.stdout
    assert "red" in result.stdout  # the text search printed its hits, and they are red shapes
    assert "prefect" not in result.stderr.lower()


def test_every_marked_shell_example_runs(
    tmp_path: Path, cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each command of the marked blocks, in order, in the newcomer's folder. The first runs the
    `mmindex` this environment installed, in a shell; the others run the same command in this process
    (the same code, without importing torch again for each). A named captioning model that cannot be
    downloaded here is replaced by the toy captioner."""
    env = newcomer_folder(tmp_path)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    toy_models = {name: env[name] for name in ("MMINDEX_MODEL", "MMINDEX_CAPTION_MODEL")}
    monkeypatch.chdir(tmp_path)
    commands = [
        re.sub(r"--caption-model \S+", "--caption-model toy-captioner", line.split("  #")[0].strip())
        for block in shell_examples()
        for line in block.splitlines()
    ]
    commands = [command for command in commands if command]
    assert commands, "no page marks a shell example"
    assert all(command.startswith("mmindex ") for command in commands), commands
    for number, command in enumerate(commands):
        if number == 0:
            result = subprocess.run(
                command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True
            )
        else:
            result = cli(*shlex.split(command)[1:], env=toy_models)
        assert result.returncode == 0, f"{command}\n{result.stdout[-1000:]}\n{result.stderr[-3000:]}"
