"""One entry per kind of job and one definition per option: the registry (mmindex.run.JOB_KINDS) and
the job specs drive the CLI, the flows, the Python API and deploy.py."""

from __future__ import annotations

import inspect
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pytest
import typer

import mmindex
from mmindex.cli import app
from mmindex.errors import ConfigError
from mmindex.jobs.spec import CaptionJob, IndexJob, Job, MaintainJob, option_of
from mmindex.run import JOB_KINDS, kind_of, run_job

JOBS = {name: kind.spec for name, kind in JOB_KINDS.items()}

PROJECT = Path(__file__).resolve().parents[2]

# The command-line contract scripts rely on: these flags must stay (more may be added).
CONTRACT = {
    "index": {
        "--db", "--table", "--model", "--batch-size", "--device", "--prune", "--json", "--captions",
        "--path-column", "--caption-column", "--include", "--exclude", "--prefix", "--since", "--until",
        "--workers", "--precision", "--quantize", "--retry-failed", "--progress", "--no-progress",
        "--caption-missing", "--caption-model", "--max-new-tokens", "--num-beams", "--prompt",
        "--new-table", "--lock-timeout", "--runner", "--ray-address", "--format", "--compile",
    },
    "caption": {
        "--db", "--table", "--caption-model", "--limit", "--where", "--recaption", "--retry-failed",
        "--batch-size", "--device", "--max-new-tokens", "--num-beams", "--prompt", "--precision",
        "--lock-timeout", "--json", "--progress", "--no-progress", "--runner", "--ray-address",
    },
    "maintain": {"--db", "--table", "--retention", "--lock-timeout", "--json"},
    "thumbnails": {"--db", "--table", "--limit", "--where", "--retry-failed", "--json"},
    "reembed": {"--model", "--name", "--from", "--limit", "--db", "--table", "--device", "--json"},
    "generate": {
        "--prompts", "--n", "--seed", "--model", "--steps", "--guidance", "--size", "--out", "--db",
        "--table", "--no-index", "--json",
    },
    "finetune": {
        "--db", "--table", "--out", "--base", "--epochs", "--lr", "--batch-size", "--train-part",
        "--holdout", "--where", "--include-generated", "--wise-alpha", "--device", "--precision",
        "--json", "--control",
    },
}  # fmt: skip


def command(name: str) -> Any:
    """The click command typer builds (typer may bring its own click: no isinstance checks here)."""
    return typer.main.get_command(app).commands[name]  # type: ignore[attr-defined]


def flags(cmd: Any) -> set[str]:
    return {flag for param in cmd.params for flag in (*param.opts, *param.secondary_opts) if flag[0] == "-"}


@pytest.mark.parametrize("kind", sorted(JOBS))
def test_every_job_field_is_an_option_of_its_command_and_the_contract_holds(kind: str) -> None:
    job_class, cmd = JOBS[kind], command(kind)
    by_name = {param.name: param for param in cmd.params}
    for spec_field in fields(job_class):
        option = option_of(spec_field)
        param = by_name[spec_field.name]
        assert param.opts[0] == option.flags(spec_field.name)[0].split("/")[0] or option.argument
        if not option.argument:
            assert param.help == option.help
        if spec_field.default is not MISSING and spec_field.default is not None:
            assert param.default == spec_field.default
    assert CONTRACT[kind] <= flags(cmd)


@pytest.mark.parametrize("kind", sorted(JOBS))
def test_flow_parameters_are_the_job_fields(kind: str) -> None:
    from mmindex.flows.runner import flow_for

    job_class = JOBS[kind]
    flow = flow_for(job_class.from_values({"source": "x", "out": "x", "model": "x"}))
    parameters = inspect.signature(flow.fn).parameters
    assert set(parameters) == {f.name for f in fields(job_class)} | {"progress_bar"}
    schema = flow.parameters.properties
    for spec_field in fields(job_class):
        assert spec_field.name in schema
        if spec_field.default not in (MISSING, None) and spec_field.default_factory is MISSING:
            assert schema[spec_field.name]["default"] == spec_field.default


@pytest.mark.parametrize("kind", sorted(JOBS))
def test_python_functions_take_the_job_fields_with_the_same_defaults(kind: str) -> None:
    job_class, function = JOBS[kind], getattr(mmindex, kind)
    parameters = inspect.signature(function).parameters
    assert set(parameters) - {"progress"} == {f.name for f in fields(job_class)}
    for spec_field in fields(job_class):
        parameter = parameters[spec_field.name]
        if spec_field.default_factory is not MISSING:
            assert tuple(parameter.default) == tuple(spec_field.default_factory())
        elif spec_field.default is MISSING:
            assert parameter.default is inspect.Parameter.empty
        else:
            assert parameter.default == spec_field.default, spec_field.name
    assert function.__doc__


def test_every_kind_of_job_has_its_command_flow_function_and_reference() -> None:
    """The registry is the one list: a kind missing from the command line, the flows, the Python API
    (and its public names) or the docs' CLI reference fails here."""
    from mmindex.flows.jobs import FLOWS

    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert set(JOB_KINDS) <= commands
    assert set(FLOWS) == set(JOB_KINDS)
    assert {flow.name for flow in FLOWS.values()} == {kind.flow for kind in JOB_KINDS.values()}
    import mmindex.api
    import mmindex.flows.jobs as flow_module

    assert set(mmindex.api.__all__) == set(JOB_KINDS) <= set(mmindex.__all__)
    for name, kind in JOB_KINDS.items():
        assert getattr(flow_module, kind.flow_function) is FLOWS[name]
        assert kind_of(kind.spec) is kind


def test_the_python_functions_are_generated_from_the_registry() -> None:
    """mmindex/api.py is what scripts/generate_api.py writes today: a new field or kind regenerates it."""
    result = subprocess.run(
        [sys.executable, "scripts/generate_api.py", "--check"], cwd=PROJECT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_an_unknown_kind_of_job_is_an_error_never_a_fallback() -> None:
    from dataclasses import dataclass
    from typing import ClassVar

    @dataclass(kw_only=True)
    class CleanupJob(Job):
        kind: ClassVar[str] = "cleanup"
        doing: ClassVar[str] = "cleaning"

    @dataclass(kw_only=True)
    class PretendIndex(Job):  # claims a registered kind without being its spec
        kind: ClassVar[str] = "index"
        doing: ClassVar[str] = "indexing"

    for job in (CleanupJob(), PretendIndex()):
        with pytest.raises(ConfigError, match="not a kind of mmindex job"):
            run_job(job)
    from mmindex.flows.runner import flow_for

    with pytest.raises(ConfigError, match="no Prefect flow runs 'cleanup'"):
        flow_for(CleanupJob())


def test_a_misspelt_keyword_is_a_clear_type_error() -> None:
    with pytest.raises(TypeError, match="batchsize"):
        mmindex.index("photos/", batchsize=8)  # type: ignore[call-arg]


def test_jobs_from_command_or_flow_values() -> None:
    job = IndexJob.from_values({"source": "s", "include": None, "exclude": ("a",), "json_output": True})
    assert isinstance(job, IndexJob) and job.include == [] and job.exclude == ["a"]
    assert job.to_params()["source"] == "s"
    assert CaptionJob.from_values({"limit": 3}).to_params()["limit"] == 3
    assert MaintainJob.from_values({}).retention == "7d"
    assert all(issubclass(job_class, Job) for job_class in JOBS.values())


def deployment_specs() -> list[dict[str, Any]]:
    code = (
        "import json, sys; sys.path.insert(0, 'deployments'); import deploy; "
        "args = deploy.parse_args(['--source', 's', '--db', 'd', '--model', 'm', '--caption-model', 'c', "
        "'--captions', 'x.csv', '--caption-missing', '--prune']); "
        "print(json.dumps([{**s, 'job': deploy.JOB_OF_FLOW[s['flow']].kind} for s in deploy.specs(args)]))"
    )
    import json

    result = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, check=True
    )
    specs: list[dict[str, Any]] = json.loads(result.stdout)
    return specs


def test_deployment_parameters_are_fields_of_their_flows_jobs() -> None:
    specs = deployment_specs()
    assert {spec["name"] for spec in specs} == {
        "nightly-ingest",
        "backfill",
        "caption-backfill",
        "maintenance",
    }
    for spec in specs:
        assert set(spec["parameters"]) <= {f.name for f in fields(JOBS[spec["job"]])}, spec["name"]
        JOBS[spec["job"]].from_values(spec["parameters"])  # and they make a valid job
