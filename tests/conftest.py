"""Shared fixtures: a private Prefect server, tiny models built on the spot, generated corpora.

Nothing here touches the network: Hugging Face is forced offline, Prefect runs a real server on
127.0.0.1 (started here unless PREFECT_API_URL already points at one), and models are built from
configs or loaded from the toy weights shipped in the package.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest_plugins = ["s3_support"]  # a moto S3 server, buckets, a fault-injecting proxy (tests/s3_support.py)

_PRIVATE = Path(tempfile.mkdtemp(prefix="mmindex-tests-"))
os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
        "LANCEDB_LOG": "error",
    }
)
os.environ.setdefault("PREFECT_HOME", str(_PRIVATE / "prefect-home"))
os.environ["MMINDEX_CACHE_DIR"] = str(_PRIVATE / "cache")  # never the user's cache
# `--precision auto` follows the CPU's kind. The suite sees every machine as AVX2-only, so `auto` is fp32
# on AVX2, AVX512-BF16 and AMX machines alike; the tests of the choice force the other kinds themselves.
os.environ["MMINDEX_CPU_KIND"] = "avx2"
for variable in ("MMINDEX_DB", "MMINDEX_TABLE", "MMINDEX_MODEL", "MMINDEX_CAPTION_MODEL", "MMINDEX_DEVICE"):
    os.environ.pop(variable, None)

_SERVER: subprocess.Popen[bytes] | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s")


def pytest_configure(config: pytest.Config) -> None:
    """Start one Prefect server for the session before any test module imports prefect."""
    global _SERVER
    if os.environ.get("PREFECT_API_URL"):
        return
    port = free_port()
    log = open(_PRIVATE / "prefect-server.log", "wb")  # noqa: SIM115 - lives as long as the server
    _SERVER = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-ui",
            "--analytics-off",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
    )
    os.environ["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    wait_for_http(f"http://127.0.0.1:{port}/api/health")


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SERVER is not None:
        if "prefect" in sys.modules:  # let this process's log and event workers flush before the server goes
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)
            EventsWorker.drain_all(timeout=10)
        _SERVER.send_signal(signal.SIGTERM)
        try:
            _SERVER.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _SERVER.kill()
    shutil.rmtree(_PRIVATE, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A randomly initialised two-layer CLIP (32-px images): for plumbing, not meaning."""
    from mmindex.toy.models import tiny_clip as build

    return str(build(tmp_path_factory.mktemp("tiny-clip")))


@pytest.fixture(scope="session")
def other_tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A second tiny CLIP, to test that a table refuses a model it was not built with."""
    from mmindex.toy.models import tiny_clip as build

    return str(build(tmp_path_factory.mktemp("other-tiny-clip"), seed=1))


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """24 generated shape images (JPEG and PNG, two folders), most with .txt captions."""
    from mmindex.toy.shapes import write_corpus

    root = tmp_path / "corpus"
    write_corpus(root, 24, seed=3)
    return root


@pytest.fixture(scope="session")
def shapes_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A table of 96 generated shapes (60% captioned) plus two exact copies of one red square, indexed
    with the toy CLIP, with thumbnails. Shared by the retrieval tests: read only."""
    import shutil

    from mmindex.ingest.pipeline import IndexOptions, run_index
    from mmindex.ingest.sources import open_source
    from mmindex.models.clip import ClipEmbedder
    from mmindex.store.reader import Store
    from mmindex.toy.shapes import write_corpus

    root = tmp_path_factory.mktemp("shapes")
    write_corpus(root / "corpus", 96, seed=21, captioned_fraction=0.6)
    original = sorted((root / "corpus").rglob("*-red-square.*"))[0]
    (root / "corpus" / "copies").mkdir()
    for n in (1, 2):
        shutil.copy(original, root / "corpus" / "copies" / f"{900 + n}-red-square{original.suffix}")
    embedder = ClipEmbedder.load("toy-clip")
    run_index(
        open_source(str(root / "corpus")), embedder, Store(str(root / "db")), IndexOptions(batch_size=32)
    )
    return root / "db"


@pytest.fixture(scope="session")
def served(shapes_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(base URL, database) of a running `mmindex serve` over a copy of the shapes table (the web
    tests; the last server test adds rows)."""
    db = tmp_path_factory.mktemp("served") / "db"
    shutil.copytree(shapes_db, db)
    port = free_port()
    log = db.parent / "server.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mmindex.cli",
            "serve",
            "--db",
            str(db),
            "--port",
            str(port),
            "--max-upload-mb",
            "1",
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "MMINDEX_DEVICE": "cpu"},
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=120)
        yield f"http://127.0.0.1:{port}", db
    finally:
        process.terminate()
        process.wait(timeout=30)
        output = log.read_text(errors="replace")
        assert "Traceback" not in output, output


CliRunner = Callable[..., "subprocess.CompletedProcess[str]"]


def run_cli_here(args: tuple[str, ...], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The `mmindex` command run in this process (click's test runner), with `env` added to the
    environment for the call: the same code, exit code, stdout and stderr as a subprocess, without
    paying for importing torch, transformers, LanceDB and Prefect again (about 6 s a call)."""
    import traceback

    from typer.testing import CliRunner as TyperRunner

    from mmindex.cli import app

    saved = os.environ.copy()
    os.environ.update(env)
    try:
        result = TyperRunner().invoke(app, list(args), prog_name="mmindex")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(result.exception))  # what a subprocess would print
    return subprocess.CompletedProcess(["mmindex", *args], result.exit_code, result.stdout, stderr)


@pytest.fixture
def cli() -> CliRunner:
    """Run the `mmindex` command: cli("index", path, env={...}). In this process by default; in a
    subprocess, as a user would, with `fresh_process=True` or when `env` sets Prefect settings (Prefect
    reads those once, at import)."""

    def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 300, fresh_process: bool = False
    ) -> subprocess.CompletedProcess[str]:
        extra = env or {}
        if not fresh_process and not any(name.startswith("PREFECT_") for name in extra):
            return run_cli_here(args, extra)
        return subprocess.run(
            [sys.executable, "-m", "mmindex.cli", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, **extra},
        )

    return run
