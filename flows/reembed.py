"""The `reembed` flow: build an embedding generation of another model beside the active one,
resumably, with an artifact. Parameters are ReembedJob's fields (mmindex.jobs.spec)."""

from __future__ import annotations

from typing import Any

from mmindex.flows.jobs import job_flow, run_in_flow
from mmindex.jobs.spec import ReembedJob


@job_flow(ReembedJob, name="mmindex-reembed")
def reembed(job: ReembedJob, progress_bar: bool = False) -> dict[str, Any]:
    """Re-embed a table with another model into a generation beside the active one."""
    return run_in_flow(job, progress_bar=progress_bar)
