"""The Prefect runner the `mmindex` command uses by default (entry point `mmindex.runners: prefect`):
each job runs as its Prefect flow in this process, against PREFECT_API_URL or a temporary server."""

from __future__ import annotations

from typing import Any

from prefect.flows import Flow

from mmindex.jobs.spec import Job


def flow_for(job: Job) -> Flow[..., dict[str, Any]]:
    if job.kind == "index":
        from mmindex.flows.index import index

        return index
    if job.kind == "caption":
        from mmindex.flows.caption import caption_missing

        return caption_missing
    if job.kind == "finetune":
        from mmindex.flows.finetune import finetune

        return finetune
    if job.kind == "generate":
        from mmindex.flows.generate import generate

        return generate
    if job.kind == "thumbnails":
        from mmindex.flows.thumbnails import thumbnails

        return thumbnails
    from mmindex.flows.maintain import maintain

    return maintain


class PrefectRunner:
    """Runs a job as a Prefect flow run (task runs, artifacts, a readable run name)."""

    def run(self, job: Job, *, progress_bar: bool = False) -> dict[str, Any]:
        from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

        # a command-line run ends when its flow does: without the heartbeat thread's 1 s join at exit
        with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            result: dict[str, Any] = flow_for(job)(**job.to_params(), progress_bar=progress_bar)
            return result
