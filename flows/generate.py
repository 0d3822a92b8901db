"""The `generate` flow: images from text prompts into a corpus, with their provenance, then indexed.
Parameters are GenerateJob's fields (mmindex.jobs.spec)."""

from __future__ import annotations

from typing import Any

from mmindex.flows.jobs import job_flow, run_in_flow
from mmindex.jobs.spec import GenerateJob


@job_flow(GenerateJob, name="mmindex-generate")
def generate(job: GenerateJob, progress_bar: bool = False) -> dict[str, Any]:
    """Generate images from prompts into `out` (PNG + JSON sidecar each) and index them as synthetic."""
    return run_in_flow(job, progress_bar=progress_bar)
