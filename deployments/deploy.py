"""Deploy mmindex's flows to a Prefect server or Prefect Cloud (whatever PREFECT_API_URL points at).

    python deployments/deploy.py --source /data/images --db ./mmindex.lancedb [--pool mmindex]
    python deployments/deploy.py --source s3://bucket/photos --db s3://bucket/index --serve

Four deployments, all on the same table (a fifth with --reembed-model):

    mmindex-index/nightly-ingest              cron, 02:00 UTC: index new and changed images
    mmindex-index/backfill                    unscheduled: run with prefix / since / until parameters
    mmindex-caption-missing/caption-backfill  unscheduled (or --caption-cron): caption rows without one
    mmindex-maintain/maintenance              cron, 03:30 UTC: compact, fold indices, delete old versions
    mmindex-reembed/reembed                   --reembed-model M (and --reembed-cron): a generation of M

With --pool (default), the deployments go to a process work pool (created if missing) and a worker runs
them: `prefect worker start --pool mmindex`. The worker's machine needs this project installed and the
MMINDEX_* / AWS_* environment it should run with. With --serve, this process runs them itself until
stopped. Deploying again updates the deployments in place. Nothing here runs at import.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmindex.config import RETENTION
from mmindex.jobs.spec import CaptionJob, IndexJob, MaintainJob, help_of
from mmindex.run import JOB_KINDS

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEPLOYED = {name: kind for name, kind in JOB_KINDS.items() if kind.deployed}  # the kinds deployed here
ENTRYPOINTS = {name: f"flows/jobs.py:{kind.flow_function}" for name, kind in DEPLOYED.items()}
JOB_OF_FLOW = {name: kind.spec for name, kind in DEPLOYED.items()}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", required=True, help="directory, manifest or s3://bucket/prefix to ingest")
    parser.add_argument(
        "--db", default=None, help="LanceDB URI [the worker's MMINDEX_DB or ./mmindex.lancedb]"
    )
    parser.add_argument("--table", default=None, help=help_of(IndexJob, "table"))
    parser.add_argument("--model", default=None, help=help_of(IndexJob, "model"))
    parser.add_argument("--caption-model", default=None, help=help_of(CaptionJob, "caption_model"))
    parser.add_argument("--captions", default=None, help=help_of(IndexJob, "captions"))
    parser.add_argument("--path-column", default=None, help=help_of(IndexJob, "path_column"))
    parser.add_argument("--caption-column", default=None, help=help_of(IndexJob, "caption_column"))
    parser.add_argument("--caption-missing", action="store_true", help=help_of(IndexJob, "caption_missing"))
    parser.add_argument("--prune", action="store_true", help="nightly ingest: " + help_of(IndexJob, "prune"))
    parser.add_argument("--retention", default=RETENTION, help=help_of(MaintainJob, "retention"))
    parser.add_argument("--ingest-cron", default="0 2 * * *", help="nightly ingest schedule (UTC)")
    parser.add_argument("--maintain-cron", default="30 3 * * *", help="maintenance schedule (UTC)")
    parser.add_argument("--caption-cron", default=None, help="caption backfill schedule (UTC) [none]")
    parser.add_argument(
        "--reembed-model",
        default=None,
        help="also deploy mmindex-reembed/reembed, building an embedding generation of this model "
        "(each run also catches up rows indexed since the last one)",
    )
    parser.add_argument("--reembed-cron", default=None, help="re-embedding schedule (UTC) [none]")
    parser.add_argument("--pool", default="mmindex", help="process work pool to deploy to [mmindex]")
    parser.add_argument("--serve", action="store_true", help="serve the deployments from this process")
    parser.add_argument("--tag", action="append", default=["mmindex"], help="tags for the deployments")
    return parser.parse_args(argv)


def specs(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The four deployments: flow entrypoint, name, schedule and default parameters."""
    where = {key: value for key, value in (("db", args.db), ("table", args.table)) if value is not None}
    optional = {
        "model": args.model,
        "captions": args.captions,
        "path_column": args.path_column,
        "caption_column": args.caption_column,
    }
    ingest = {"source": args.source, **where, **{name: value for name, value in optional.items() if value}}
    captioner = {"caption_model": args.caption_model} if args.caption_model else {}
    if args.caption_missing:
        ingest.update(caption_missing=True, **captioner)
    caption = {**where, **captioner}
    reembed = (
        [
            {
                "flow": "reembed",
                "name": "reembed",
                "cron": args.reembed_cron,
                "parameters": {**where, "model": args.reembed_model},
                "description": "Build (or catch up) an embedding generation of another model beside the "
                "active one; `mmindex compare` and `mmindex activate` switch to it.",
                "concurrency_limit": 1,
            }
        ]
        if args.reembed_model
        else []
    )
    return reembed + [
        {
            "flow": "index",
            "name": "nightly-ingest",
            "cron": args.ingest_cron,
            "parameters": {**ingest, "prune": args.prune},
            "description": "Index new and changed images of the source; unchanged ones cost a listing.",
            "concurrency_limit": 1,
        },
        {
            "flow": "index",
            "name": "backfill",
            "cron": None,
            "parameters": ingest,
            "description": "Ad-hoc (re)indexing of part of the source: pass prefix, since and until.",
            "concurrency_limit": None,
        },
        {
            "flow": "caption",
            "name": "caption-backfill",
            "cron": args.caption_cron,
            "parameters": caption,
            "description": "Caption rows that have none (resumable); `limit` and `where` narrow it.",
            "concurrency_limit": 1,
        },
        {
            "flow": "maintain",
            "name": "maintenance",
            "cron": args.maintain_cron,
            "parameters": {**where, "retention": args.retention},
            "description": "Compact the table, fold new rows into its indices, delete old versions.",
            "concurrency_limit": 1,
        },
    ]


def ensure_process_pool(name: str) -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(name)
        except ObjectNotFound:
            try:
                client.create_work_pool(WorkPoolCreate(name=name, type="process"))
                print(f"created process work pool {name!r}")
            except ObjectAlreadyExists:
                pass


def deploy(args: argparse.Namespace) -> list[str]:
    from prefect import flow

    ensure_process_pool(args.pool)
    names = []
    for spec in specs(args):
        remote = flow.from_source(source=str(PROJECT_ROOT), entrypoint=ENTRYPOINTS[spec["flow"]])
        remote.deploy(
            name=spec["name"],
            work_pool_name=args.pool,
            cron=spec["cron"],
            parameters=spec["parameters"],
            description=spec["description"],
            concurrency_limit=spec["concurrency_limit"],
            tags=args.tag,
            print_next_steps=False,
            ignore_warnings=True,
        )
        names.append(f"{remote.name}/{spec['name']}")
    return names


def serve_all(args: argparse.Namespace) -> None:
    from prefect import serve

    from mmindex.flows.jobs import FLOWS as flows

    serve(
        *[
            flows[spec["flow"]].to_deployment(
                name=spec["name"],
                cron=spec["cron"],
                parameters=spec["parameters"],
                description=spec["description"],
                concurrency_limit=spec["concurrency_limit"],
                tags=args.tag,
            )
            for spec in specs(args)
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.serve:
        serve_all(args)
        return
    for name in deploy(args):
        print(f"deployed {name} to work pool {args.pool!r}")
    print(f"start a worker: prefect worker start --pool {args.pool}")


if __name__ == "__main__":
    main()
