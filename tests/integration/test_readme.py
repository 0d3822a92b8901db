"""Every Python example of README.md runs, as a newcomer would run it, one block after another.

The blocks run in one fresh process (like cells of a notebook) in a folder that holds what they name:
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

README = Path(__file__).resolve().parents[2] / "README.md"
REAL_MODEL = "openai/clip-vit-base-patch32"


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def shell_examples() -> list[str]:
    """The shell blocks marked as examples (the others are synopses or need a server of yours)."""
    pattern = r"^<!-- example: [^>]*-->\n```bash\n(.*?)^```"
    return re.findall(pattern, README.read_text(), flags=re.S | re.M)


def newcomer_folder(root: Path) -> dict[str, str]:
    """A folder with what the examples name, and the environment that points them at the toy models."""
    from mmindex.toy.shapes import write_corpus

    write_corpus(root / "photos", 24, seed=21)
    shutil.copy(sorted((root / "photos").rglob("*.jpg"))[0], root / "query.jpg")
    return {**os.environ, "MMINDEX_MODEL": "toy-clip", "MMINDEX_CAPTION_MODEL": "toy-captioner"}


def test_readme_has_python_examples() -> None:
    blocks = python_blocks()
    assert len(blocks) >= 3 and any("mmindex.index(" in block for block in blocks)


def test_every_python_block_of_the_readme_runs(tmp_path: Path) -> None:
    env = newcomer_folder(tmp_path)
    script = []
    for number, block in enumerate(python_blocks(), start=1):
        script.append(f"print('--- README block {number}', flush=True)")
        script.append(block.replace(REAL_MODEL, "toy-clip"))
    env.pop("PREFECT_API_URL", None)  # the notebook surface must not need Prefect
    result = subprocess.run(
        [sys.executable, "-c", "\n".join(script)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert f"--- README block {len(python_blocks())}" in result.stdout
    assert "red" in result.stdout  # the text search printed its hits, and they are red shapes
    assert "prefect" not in result.stderr.lower()


def test_every_marked_shell_example_of_the_readme_runs(
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
    assert commands, "README marks no shell example"
    assert all(command.startswith("mmindex ") for command in commands), commands
    for number, command in enumerate(commands):
        if number == 0:
            result = subprocess.run(
                command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True
            )
        else:
            result = cli(*shlex.split(command)[1:], env=toy_models)
        assert result.returncode == 0, f"{command}\n{result.stdout[-1000:]}\n{result.stderr[-3000:]}"
