"""The `index` flow: list -> load/decode -> [caption] -> embed -> write, streamed in chunks, with a
progress artifact and a summary artifact. Parameters are IndexJob's fields (mmindex.jobs.spec)."""

from __future__ import annotations

from typing import Any

from mmindex.flows.jobs import job_flow, run_in_flow
from mmindex.jobs.spec import IndexJob


@job_flow(IndexJob, name="mmindex-index")
def index(job: IndexJob, progress_bar: bool = False) -> dict[str, Any]:
    """Index images from a directory, manifest or bucket into a LanceDB table of CLIP embeddings."""
    return run_in_flow(job, progress_bar=progress_bar)
