"""The Prefect flows of mmindex's jobs, one per entry of the registry (mmindex.run.JOB_KINDS): parameters
generated from the job's spec, the body is `run_job` with task-wrapped parts, and every run gets a
readable name, progress and a summary artifact.

Each flow is also a name of this module (`index`, `caption_missing`, `maintain`, ...: the entry's
`flow_function`), which is what a deployment's entrypoint names: `flows/jobs.py:index`."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any, get_type_hints

from prefect import flow
from prefect.flows import Flow

from mmindex.config import Settings
from mmindex.flows.reporting import FlowProgress, publish_report
from mmindex.jobs.spec import Job, option_of, ordered_fields
from mmindex.progress import TerminalProgress
from mmindex.run import JOB_KINDS, JobKind, RunHooks, run_job
from mmindex.tasks.index import CAPTION_STEPS, INDEX_STEPS
from mmindex.tasks.models import load_captioner, load_embedder, maintain_table

PREFECT_HOOKS = RunHooks(
    load_embedder=load_embedder,
    load_captioner=load_captioner,
    index_steps=INDEX_STEPS,
    caption_steps=CAPTION_STEPS,
    maintain=maintain_table,
)


def job_parameters(job_class: type[Job]) -> list[inspect.Parameter]:
    """The job's fields as parameters: the command line's arguments (e.g. `source`) may be passed by
    position, the rest by keyword; list fields default to None, meaning empty."""
    hints = get_type_hints(job_class)
    positional: list[inspect.Parameter] = []
    keywords: list[inspect.Parameter] = []
    for spec_field in ordered_fields(job_class):
        annotation: Any = hints[spec_field.name]
        default: Any = spec_field.default
        if spec_field.default_factory is not MISSING:
            annotation, default = annotation | None, None
        elif default is MISSING:
            default = inspect.Parameter.empty
        by_position = option_of(spec_field).argument
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD if by_position else inspect.Parameter.KEYWORD_ONLY
        parameter = inspect.Parameter(spec_field.name, kind, default=default, annotation=annotation)
        (positional if by_position else keywords).append(parameter)
    return positional + keywords


def job_flow(kind: JobKind) -> Flow[..., dict[str, Any]]:
    """The flow of one kind of job: its parameters are the spec's fields (plus `progress_bar`), so a
    deployment or the UI passes fields; the body builds the job and runs it (`run_in_flow`)."""
    job_class = kind.spec
    progress = inspect.Parameter(
        "progress_bar", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=bool
    )
    signature = inspect.Signature([*job_parameters(job_class), progress], return_annotation=dict[str, Any])

    def body(*args: Any, **kwargs: Any) -> dict[str, Any]:
        values = dict(signature.bind(*args, **kwargs).arguments)
        progress_bar = bool(values.pop("progress_bar", False))
        return run_in_flow(job_class.from_values(values), progress_bar=progress_bar)

    body.__signature__ = signature  # type: ignore[attr-defined]
    body.__name__ = body.__qualname__ = kind.flow_function
    body.__module__ = __name__
    description = (job_class.__doc__ or "").strip()
    body.__doc__ = description + "\n\n" + parameter_docs(job_class)
    return flow(name=kind.flow, description=description.splitlines()[0], flow_run_name=run_namer(kind.name))(
        body
    )


def run_in_flow(job: Job, *, progress_bar: bool = False) -> dict[str, Any]:
    with TerminalProgress(job.doing, enabled=progress_bar) as terminal:
        progress = FlowProgress(terminal if progress_bar else None) if JOB_KINDS[job.kind].progress else None
        report = run_job(job, hooks=PREFECT_HOOKS, progress=progress)
    publish_report(report, job.kind)
    return report.to_dict()


def run_namer(kind: str) -> Callable[[], str]:
    """A flow run name an operator can read in the UI: `index photos -> images`, `caption images`."""

    def name() -> str:
        from prefect.runtime import flow_run

        parameters = dict(flow_run.parameters or {})
        table = parameters.get("table") or Settings.from_env().table
        source = str(parameters.get("source") or "").rstrip("/")
        if source:
            shown = source if len(source) <= 48 else "…" + source[-47:]
            return f"{kind} {shown} -> {table}"
        db = str(parameters.get("db") or Settings.from_env().db)
        return f"{kind} {table} ({os.path.basename(db.rstrip('/')) or db})"

    return name


def parameter_docs(job_class: type[Job]) -> str:
    return "\n".join(f"{f.name}: {option_of(f).help}" for f in fields(job_class))


FLOWS: dict[str, Flow[..., dict[str, Any]]] = {name: job_flow(kind) for name, kind in JOB_KINDS.items()}
# each flow under its own name too, for deployments' entrypoints (`flows/jobs.py:index`) and imports
globals().update({kind.flow_function: FLOWS[name] for name, kind in JOB_KINDS.items()})
