"""The `finetune` flow: fine-tune a table's CLIP model on its own captions, with the before/after
retrieval table as an artifact. Parameters are FinetuneJob's fields (mmindex.jobs.spec)."""

from __future__ import annotations

from typing import Any

from mmindex.flows.jobs import job_flow, run_in_flow
from mmindex.jobs.spec import FinetuneJob


@job_flow(FinetuneJob, name="mmindex-finetune")
def finetune(job: FinetuneJob, progress_bar: bool = False) -> dict[str, Any]:
    """Fine-tune the table's model on its captioned rows; save it to `out` with metrics and a model card."""
    return run_in_flow(job, progress_bar=progress_bar)
