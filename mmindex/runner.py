"""Who runs a job for the command line: in this process, or an orchestrator found by entry point.

`mmindex` reaches Prefect only through a `Runner`: the `prefect` runner (mmindex.flows.runner, the
default) runs the job as a Prefect flow, which calls the same `run_job` as the `inprocess` runner.
MMINDEX_ORCHESTRATOR chooses: `prefect` (default) or `inprocess`.
"""

from __future__ import annotations

import os
from importlib.metadata import entry_points
from typing import Any, Protocol

from mmindex.errors import ConfigError
from mmindex.jobs.spec import Job
from mmindex.progress import TerminalProgress
from mmindex.run import run_job

RUNNER_PLUGINS = "mmindex.runners"
DEFAULT_ORCHESTRATOR = "prefect"


class Runner(Protocol):
    def run(self, job: Job, *, progress_bar: bool = False) -> dict[str, Any]:
        """Run a validated job to its end; the report as a JSON-able dict."""
        ...


class InProcessRunner:
    """Runs the job here, with a terminal progress bar; no orchestrator involved."""

    def run(self, job: Job, *, progress_bar: bool = False) -> dict[str, Any]:
        with TerminalProgress(job.doing, enabled=progress_bar) as bar:
            return run_job(job, progress=bar).to_dict()


def runner_named(name: str | None = None) -> Runner:
    """The runner called `name` (default MMINDEX_ORCHESTRATOR, else prefect)."""
    chosen = (name or os.environ.get("MMINDEX_ORCHESTRATOR") or DEFAULT_ORCHESTRATOR).strip().lower()
    if chosen == "inprocess":
        return InProcessRunner()
    found = [entry for entry in entry_points(group=RUNNER_PLUGINS) if entry.name == chosen]
    if not found:
        known = sorted({"inprocess", *(entry.name for entry in entry_points(group=RUNNER_PLUGINS))})
        if chosen == DEFAULT_ORCHESTRATOR:
            raise ConfigError(
                f"the {chosen} runner is not registered ({RUNNER_PLUGINS} entry points missing): reinstall "
                "mmindex, or set MMINDEX_ORCHESTRATOR=inprocess"
            )
        raise ConfigError(f"MMINDEX_ORCHESTRATOR={chosen!r} is not one of {', '.join(known)}")
    runner: Runner = found[0].load()()
    return runner
