"""The Prefect runner the `mmindex` command uses by default (entry point `mmindex.runners: prefect`):
each job runs as its Prefect flow in this process, against PREFECT_API_URL or a temporary server.

Without PREFECT_API_URL the runner starts Prefect's temporary server itself and waits for it up to
MMINDEX_PREFECT_STARTUP_TIMEOUT seconds (default 120; Prefect's own 20 s is not enough on a busy
machine or with several runs starting at once). If it still does not answer, the job runs in this
process without Prefect, before any of its work has started, and the report says so: a slow
orchestrator never costs a run.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from prefect.flows import Flow

from mmindex.errors import ConfigError, first_line
from mmindex.jobs.spec import Job
from mmindex.progress import TerminalProgress
from mmindex.run import run_job

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_ENV = "MMINDEX_PREFECT_STARTUP_TIMEOUT"
STARTUP_TIMEOUT_S = 120.0


class ServerDidNotStart(Exception):
    """Prefect's temporary server did not answer in time (or exited)."""


def flow_for(job: Job) -> Flow[..., dict[str, Any]]:
    """The Prefect flow that runs a job of this kind (an unknown kind is an error, never a fallback)."""
    from mmindex.flows.jobs import FLOWS

    if job.kind not in FLOWS:
        raise ConfigError(f"no Prefect flow runs {job.kind!r} jobs; kinds with one: {', '.join(FLOWS)}")
    return FLOWS[job.kind]


class PrefectRunner:
    """Runs a job as a Prefect flow run (task runs, artifacts, a readable run name)."""

    def run(self, job: Job, *, progress_bar: bool = False) -> dict[str, Any]:
        from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        # a command-line run ends when its flow does: without the heartbeat thread's 1 s join at exit
        overrides: dict[Any, Any] = {PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
        if not PREFECT_API_URL.value():
            try:
                overrides[PREFECT_API_URL] = temporary_server(startup_timeout())
            except ServerDidNotStart as exc:
                return run_without_prefect(job, str(exc), progress_bar=progress_bar)
        with temporary_settings(overrides):
            result: dict[str, Any] = flow_for(job)(**job.to_params(), progress_bar=progress_bar)
            return result


def startup_timeout() -> float:
    raw = os.environ.get(STARTUP_TIMEOUT_ENV, "").strip()
    try:
        seconds = float(raw) if raw else STARTUP_TIMEOUT_S
    except ValueError:
        raise ConfigError(f"{STARTUP_TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if seconds < 0:
        raise ConfigError(f"{STARTUP_TIMEOUT_ENV} must not be negative, got {raw!r}")
    return seconds


def temporary_server(timeout: float) -> str:
    """The API URL of this process's temporary Prefect server, started (once) and answering."""
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    try:
        server.start(timeout=max(timeout, 0.1))  # type: ignore[arg-type]  # Prefect waits in 0.1 s steps
    except Exception as exc:  # Prefect raises RuntimeError on a time-out, others when the process fails
        server.stop()
        raise ServerDidNotStart(
            f"Prefect's temporary server did not start within {timeout:g} s ({first_line(exc)[:200]})"
        ) from exc
    return server.api_url


def run_without_prefect(job: Job, why: str, *, progress_bar: bool) -> dict[str, Any]:
    """Run `job` here, as MMINDEX_ORCHESTRATOR=inprocess would, with `why` in its report."""
    note = (
        f"ran without Prefect (no flow run, no artifact): {why}. Start a server once with `prefect server "
        f"start` and set PREFECT_API_URL, or raise {STARTUP_TIMEOUT_ENV}"
    )
    print(f"mmindex: {note}", file=sys.stderr)
    with TerminalProgress(job.doing, enabled=progress_bar) as bar:
        result = run_job(job, progress=bar).to_dict()
    result["notes"] = [*result.get("notes", []), note]
    if "summary" in result:
        result["summary"] = [*result["summary"], f"note: {note}"]
    return result
