"""The `mmindex` command. Exit codes: 0 done (even with per-item failures), 2 bad arguments or
configuration (one line on stderr), 1 anything else that stopped a run.

`index`, `caption` and `maintain` take their options from the job specs (mmindex.jobs.spec), validate
the job before anything starts, and hand it to a runner (mmindex.runner): by default a Prefect
flow, never imported here. Heavy imports (torch, transformers, prefect) happen inside the commands
that need them, so `mmindex stats` and `mmindex --help` stay quick.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_type_hints

import typer

from mmindex.config import DEVICES, Settings
from mmindex.errors import ConfigError, MMIndexError
from mmindex.jobs.spec import (
    PRECISION_HELP,
    FinetuneJob,
    GenerateJob,
    IndexJob,
    Job,
    option_of,
    ordered_fields,
)
from mmindex.query.request import SearchRequest
from mmindex.run import JOB_KINDS, JobKind, validate

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Index images and captions into LanceDB with CLIP, and search them.",
)

F = TypeVar("F", bound=Callable[..., Any])

DbOption = Annotated[
    str | None, typer.Option("--db", help="LanceDB URI [env MMINDEX_DB, default ./mmindex.lancedb]")
]
TableOption = Annotated[
    str | None, typer.Option("--table", help="table name [env MMINDEX_TABLE, default images]")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print machine-readable JSON on stdout")]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="MMINDEX_SERVER_TOKEN",
        help="the search server's shared secret (sent as a bearer token)",
        show_envvar=True,
    ),
]
ProgressOption = Annotated[bool, typer.Option("--progress/--no-progress", help="progress bar on stderr")]


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"mmindex: error: {message}", err=True)
    raise typer.Exit(code)


def handles_errors(command: F) -> F:
    """Turn mmindex's exceptions into one line on stderr and the documented exit code."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ConfigError as exc:
            fail(str(exc), 2)
        except MMIndexError as exc:
            fail(str(exc), 1)
        except KeyboardInterrupt:
            typer.echo("mmindex: interrupted; finished batches are saved and a rerun continues", err=True)
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _settings(db: str | None, table: str | None) -> Settings:
    return Settings.from_env(db=db, table=table)


def _check_device(device: str | None) -> None:
    if device is not None and device not in DEVICES:
        raise ConfigError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")


def cli_parameters(job_class: type[Job]) -> list[inspect.Parameter]:
    """The job's fields as typer parameters: flags, help and bounds from the spec."""
    hints = get_type_hints(job_class)
    arguments: list[inspect.Parameter] = []
    options: list[inspect.Parameter] = []
    for spec_field in ordered_fields(job_class):
        option = option_of(spec_field)
        annotation: Any = hints[spec_field.name]
        default: Any = spec_field.default
        if spec_field.default_factory is not MISSING:
            annotation, default = annotation | None, None  # a repeatable option: None means none given
        if option.argument:
            marker: Any = typer.Argument(help=option.help)
            default = inspect.Parameter.empty if default is MISSING else default
            target = arguments
        else:
            bounds: dict[str, Any] = {
                name: value for name, value in (("min", option.min), ("max", option.max)) if value is not None
            }
            marker = typer.Option(*option.flags(spec_field.name), help=option.help, **bounds)
            default = inspect.Parameter.empty if default is MISSING else default  # a required option
            target = options
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        target.append(
            inspect.Parameter(
                spec_field.name, kind, default=default, annotation=Annotated[annotation, marker]
            )
        )
    # Python wants parameters without defaults first; typer orders positionals among themselves only
    ordered = arguments + options
    return [p for p in ordered if p.default is inspect.Parameter.empty] + [
        p for p in ordered if p.default is not inspect.Parameter.empty
    ]


def job_command(kind: JobKind) -> None:
    """Register the command of one kind of job: its options are the spec's fields (mmindex.jobs.spec),
    then --json and, for jobs that report progress, --progress/--no-progress."""
    job_class = kind.spec
    names = {f.name for f in fields(job_class)}
    own = [
        inspect.Parameter("json_output", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=JsonOption)
    ]
    if kind.progress:
        own.append(
            inspect.Parameter(
                "progress", inspect.Parameter.KEYWORD_ONLY, default=True, annotation=ProgressOption
            )
        )

    def command(**values: Any) -> None:
        job = job_class.from_values({k: v for k, v in values.items() if k in names})
        run_job_command(job, json_output=values["json_output"], progress=values.get("progress", False))

    command.__signature__ = inspect.Signature([*cli_parameters(job_class), *own])  # type: ignore[attr-defined]
    command.__doc__ = job_class.__doc__
    command.__name__ = kind.name
    app.command(name=kind.name)(handles_errors(command))


def run_job_command(job: Job, *, json_output: bool, progress: bool) -> None:
    """Validate the job (exit 2 before any flow or model starts), run it, print the result."""
    from mmindex.runner import runner_named

    _check_device(getattr(job, "device", None))
    validate(job)
    runner = runner_named()
    result = runner.run(job, progress_bar=progress and not json_output and sys.stderr.isatty())
    if json_output:
        emit_json(result)
    elif "summary" in result:  # reports that write their own summary (maintenance, fine-tuning)
        typer.echo("\n".join(result["summary"]))
    else:
        typer.echo("\n".join(_summary(result)))


for _kind in JOB_KINDS.values():
    job_command(_kind)


def _summary(report: dict[str, Any]) -> list[str]:
    from mmindex.report import RunReport

    return RunReport.from_dict(report).summary_lines()


@app.command()
@handles_errors
def search(
    text: Annotated[str | None, typer.Argument(help="text query")] = None,
    image: Annotated[Path | None, typer.Option("--image", help="query image file")] = None,
    labels: Annotated[
        str | None, typer.Option("--labels", help="comma-separated labels for zero-shot scoring of --image")
    ] = None,
    captions: Annotated[bool, typer.Option("--captions", help="nearest stored captions to --image")] = False,
    text_only: Annotated[
        bool, typer.Option("--text-only", help="full-text (BM25) search over captions")
    ] = False,
    hybrid: Annotated[bool, typer.Option("--hybrid", help="vector + full-text search fused by rank")] = False,
    db: DbOption = None,
    table: TableOption = None,
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="number of results")] = 10,
    where: Annotated[
        str | None, typer.Option("--where", help='SQL filter over the columns, e.g. "width > 512"')
    ] = None,
    template: Annotated[
        str, typer.Option("--template", help="prompt template for --labels")
    ] = "a photo of a {}",
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or mps")] = None,
    offset: Annotated[int, typer.Option("--offset", min=0, help="skip the first N results (paging)")] = 0,
    min_score: Annotated[
        float | None,
        typer.Option("--min-score", min=-1.0, max=1.0, help="only hits with at least this cosine score"),
    ] = None,
    order_by: Annotated[
        str | None,
        typer.Option(
            "--order-by",
            help="order the relevant hits by a column: 'COLUMN', 'COLUMN asc' or 'COLUMN desc' "
            "(with --min-score: every hit above it; else each page)",
        ),
    ] = None,
    synthetic: Annotated[
        str, typer.Option("--synthetic", help="generated images: include, exclude or only")
    ] = "include",
    imagine: Annotated[
        int,
        typer.Option(
            "--imagine", min=0, help="also make N images for the TEXT and fuse their image search (RRF)"
        ),
    ] = 0,
    generator: Annotated[
        str | None, typer.Option("--generator", help="text-to-image model for --imagine [sd-turbo]")
    ] = None,
    server: Annotated[
        str | None,
        typer.Option(
            "--server", envvar="MMINDEX_SERVER", help="ask a running `mmindex serve` at this URL instead"
        ),
    ] = None,
    no_server: Annotated[
        bool,
        typer.Option(
            "--no-server",
            help="search in this process even when a running `mmindex serve` of this table is found",
        ),
    ] = False,
    generation: Annotated[
        str | None,
        typer.Option("--generation", help="search this embedding generation, not the active one"),
    ] = None,
    distinct: Annotated[
        bool, typer.Option("--distinct", help="hide exact copies (the same file content) of a better hit")
    ] = False,
    token: TokenOption = None,
    json_output: JsonOption = False,
) -> None:
    """Search: TEXT -> images, --image -> similar images, --captions, --labels, --text-only, --hybrid."""
    _check_device(device)
    if (labels or captions) and image is None:
        raise ConfigError("--labels and --captions score an image: add --image PATH")
    if text_only and hybrid:
        raise ConfigError("give --text-only or --hybrid, not both")
    if (text_only or hybrid) and text is None:
        raise ConfigError("--text-only and --hybrid need a TEXT query")
    if text is None and image is None:
        raise ConfigError("give a TEXT query or --image PATH")
    if text is not None and image is not None:
        raise ConfigError("give either a TEXT query or --image, not both")
    request = SearchRequest(
        text=text,
        image=image,
        mode="text" if text_only else "hybrid" if hybrid else "vector",
        k=k,
        offset=offset,
        where=where,
        synthetic=synthetic,
        distinct=distinct,
        min_score=min_score,
        order_by=order_by,
        generation=generation,
        imagine=imagine,
        generator=generator,
    )  # one validation, the same as a notebook's and the server's
    settings = _settings(db, table)
    if not server and not no_server and not (labels or captions or imagine or generation):
        from mmindex.server.announce import find_server

        found = find_server(settings.db, settings.table)
        if found is not None:
            server, token = found.url, token or found.token
            typer.echo(
                f"(answered by the running mmindex serve at {server}; --no-server to search here)", err=True
            )
    if server:
        if labels or captions or imagine:
            raise ConfigError("--labels, --captions and --imagine run locally: leave out --server")
        from mmindex.server.client import search_remote

        print_hits(search_remote(server, request, token=token), json_output)
        return
    from mmindex.query.handle import ImageIndex
    from mmindex.query.search import with_synthetic
    from mmindex.store.reader import Store

    # a missing table is an error here, before any model loads
    index = ImageIndex(Store.from_settings(settings), device=device or settings.device)
    if image is not None and labels is not None:
        scores = index.labels(image, labels.split(","), template)
        if json_output:
            emit_json([s.to_dict() for s in scores])
        else:
            for s in scores:
                typer.echo(f"{s.score:7.4f}  {s.probability:6.1%}  {s.label}")
        return
    if image is not None and captions:
        results = index.captions_for(image, k, with_synthetic(where, synthetic, index.searcher.facts().names))
    else:
        results = index.execute(request)
    print_hits(results.to_list(), json_output, first_rank=offset + 1)


@app.command("generations")
@handles_errors
def list_generations(db: DbOption = None, table: TableOption = None, json_output: JsonOption = False) -> None:
    """The table's embedding generations: name, model, dimension, state and rows embedded."""
    from mmindex.query.handle import ImageIndex
    from mmindex.store.reader import Store

    listed = ImageIndex(Store.from_settings(_settings(db, table))).generations()
    if json_output:
        emit_json(listed)
        return
    for generation in listed:
        share = generation["rows_embedded"] / generation["rows"] if generation["rows"] else 0.0
        typer.echo(
            f"{generation['state']:8}  {generation['name']:24}  {generation['dim']:5}-d  "
            f"{generation['rows_embedded']}/{generation['rows']} rows ({share:.0%})  {generation['model']}"
        )


@app.command()
@handles_errors
def compare(
    a: Annotated[str, typer.Argument(help="a generation (see `mmindex generations`)")],
    b: Annotated[str, typer.Argument(help="another generation")],
    queries: Annotated[
        Path | None,
        typer.Option("--queries", help="a file of query texts, one per line [the table's captions]"),
    ] = None,
    max_queries: Annotated[int, typer.Option("--max-queries", min=1, help="use at most N queries")] = 200,
    db: DbOption = None,
    table: TableOption = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or mps")] = None,
    json_output: JsonOption = False,
) -> None:
    """Shadow evaluation before a switch: each generation's caption->image and image->caption
    recall@1/5/10 on the table's human captions, the overlap of their results, where they disagree."""
    from mmindex.query.handle import ImageIndex
    from mmindex.store.reader import Store

    _check_device(device)
    settings = _settings(db, table)
    texts = None
    if queries is not None:
        try:
            texts = [
                line.strip() for line in queries.read_text(encoding="utf-8").splitlines() if line.strip()
            ]
        except OSError as exc:
            raise ConfigError(f"cannot read --queries {queries}: {exc.strerror or exc}") from exc
    index = ImageIndex(Store.from_settings(settings), device=device or settings.device)
    result = index.compare(a, b, queries=max_queries, texts=texts)
    if json_output:
        emit_json(result.to_dict())
        return
    for line in result.lines():
        typer.echo(line)


@app.command()
@handles_errors
def activate(
    name: Annotated[str, typer.Argument(help="the generation to answer queries with")],
    allow_partial: Annotated[
        bool, typer.Option("--allow-partial", help="activate even if some rows lack its vectors")
    ] = False,
    db: DbOption = None,
    table: TableOption = None,
    json_output: JsonOption = False,
) -> None:
    """Switch the table to another embedding generation, atomically; activating the previous one rolls
    back. A running `mmindex serve` follows at its next query."""
    from mmindex.ingest.reembed import coverage
    from mmindex.store import generations
    from mmindex.store.reader import Store
    from mmindex.store.writer import open_writer

    store = Store.from_settings(_settings(db, table))
    chosen = generations.generation_named(store.lancedb_table().schema, name)
    embedded, rows = coverage(store, chosen) if chosen.state != "retired" else (0, 0)
    if chosen.state != "active" and embedded < rows and not allow_partial:
        raise ConfigError(
            f"generation {name} covers {embedded} of {rows} rows ({embedded / rows:.1%}): finish it with "
            f"`mmindex reembed --model {chosen.model} --name {name}`, or pass --allow-partial"
        )
    with open_writer(store) as writer:
        previous, now = generations.activate(writer.images, name)
    result = {
        "active": now.name,
        "model": now.model,
        "previous": previous.name,
        "rows_embedded": embedded,
        "rows": rows,
    }
    if json_output:
        emit_json(result)
    elif previous.name == now.name:
        typer.echo(f"{now.name} is already the active generation")
    else:
        typer.echo(
            f"active: {now.name} ({now.model}); was {previous.name}: "
            f"`mmindex activate {previous.name}` rolls back"
        )


@app.command()
@handles_errors
def retire(
    name: Annotated[str, typer.Argument(help="the generation to drop")],
    db: DbOption = None,
    table: TableOption = None,
    json_output: JsonOption = False,
) -> None:
    """Drop an inactive generation's vectors and indices; the space returns at the next `mmindex maintain`."""
    from mmindex.store import generations
    from mmindex.store.reader import Store
    from mmindex.store.writer import open_writer

    store = Store.from_settings(_settings(db, table))
    with open_writer(store) as writer:
        retired = generations.retire(writer.images, name)
    if json_output:
        emit_json(retired.to_dict())
    else:
        typer.echo(f"retired {retired.name} ({retired.model}); `mmindex maintain` returns its space")


def print_hits(hits: list[dict[str, Any]], json_output: bool, first_rank: int = 1) -> None:
    """The search command's output: the hits as JSON (its contract), or one line each."""
    if json_output:
        emit_json(hits)
        return
    if not hits:
        typer.echo("no results", err=True)
    for rank, hit in enumerate(hits, first_rank):
        caption = f"  “{hit['caption']}”" if hit.get("caption") else ""
        typer.echo(f"{rank:3d}. {hit['score']:7.4f}  {hit['key']}{caption}")


@app.command()
@handles_errors
def serve(
    db: DbOption = None,
    table: TableOption = None,
    host: Annotated[str, typer.Option("--host", help="address to bind (127.0.0.1: this machine only)")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="port to listen on")] = 8000,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or mps")] = None,
    max_upload_mb: Annotated[
        float, typer.Option("--max-upload-mb", min=0.01, help="largest query image upload, in MB")
    ] = 20.0,
    precision: Annotated[str, typer.Option("--precision", help=PRECISION_HELP)] = "auto",
    quantize: Annotated[
        str | None,
        typer.Option("--quantize", help="int8: dynamic int8 linear layers (CPU; text queries ~2.5x faster)"),
    ] = None,
    text_int8: Annotated[
        str,
        typer.Option(
            "--text-int8",
            help="auto: on a CPU in fp32, answer text queries with an int8 text tower where it is faster "
            "and stays within cosine 0.99 of fp32 on the table's captions; off: never",
        ),
    ] = "auto",
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-host",
            help="also answer requests for this Host name (repeatable; * for any). Loopback names and "
            "the bound address are always answered",
        ),
    ] = None,
    token: TokenOption = None,
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", help="one line per request on stderr")
    ] = True,
) -> None:
    """Serve a search page and a JSON API over a table (read only; docs at /docs). Bound to another
    address than loopback, it requires a token (--token, or one made up and printed at start)."""
    _check_device(device)
    # the text tower and LanceDB take turns on the same cores: torch's OpenMP threads must sleep
    # when a forward pass ends, not spin (a spinning pool slowed the searches that followed by 15%)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch is first imported
    try:
        import uvicorn

        from mmindex.server.app import create_app
    except ImportError as exc:
        raise ConfigError(
            f'mmindex serve needs the serve extra: pip install "mmindex[serve]" ({exc})'
        ) from exc
    from mmindex.query.handle import ImageIndex
    from mmindex.store.reader import Store

    settings = _settings(db, table)
    index = ImageIndex(
        Store.from_settings(settings),
        device=device or settings.device,
        precision=precision,
        quantize=quantize,
    )
    from mmindex.server.guard import ACCESS_LOG, allowed_hosts, is_loopback

    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    typer.echo(f"loading {index.store.info().model} for {index.store.describe()} ...", err=True)
    asgi = create_app(
        index,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024),
        text_int8=text_int8,
        hosts=allowed_hosts(host, allow_host or ()),
        token=token,
    )
    if access_log:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        ACCESS_LOG.addHandler(handler)
        ACCESS_LOG.setLevel(logging.INFO)
        ACCESS_LOG.propagate = False
    typer.echo(f"text queries: {index.searcher.embedder.text_compute}", err=True)
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/"
    if not is_loopback(host):
        names = ", ".join(sorted(allowed_hosts(host, allow_host or ())))
        typer.echo(
            f"warning: listening on {host}, reachable from other machines; every request needs the token "
            f"and a Host of: {names} (add the names clients use with --allow-host)",
            err=True,
        )
    shown = f"{url}?token={token}" if token else url
    typer.echo(f"serving {shown}  (API docs: {url}docs)", err=True)
    from mmindex.server.announce import Announcement, announced, local_url

    store = index.store
    announcement = Announcement(local_url(host, port), os.getpid(), store.db_uri, store.table_name, token)
    with announced(announcement) if port else contextlib.nullcontext():  # port 0: known only later
        uvicorn.run(asgi, host=host, port=port, log_level="warning")


@app.command()
@handles_errors
def stats(db: DbOption = None, table: TableOption = None, json_output: JsonOption = False) -> None:
    """Rows, failures, captions by source, the embedding model and the indices of a table."""
    from mmindex.store.reader import Store
    from mmindex.store.upkeep import table_stats

    settings = _settings(db, table)
    result = table_stats(Store.from_settings(settings))
    if json_output:
        emit_json(result)
        return
    captions = result["captions"]
    typer.echo(f"table        {result['table']} in {result['db']}")
    typer.echo(f"rows         {result['rows']}")
    typer.echo(f"failures     {result['failures']} (+{result['warnings']} warnings)")
    typer.echo("captions     " + ", ".join(f"{source} {rows}" for source, rows in captions.items()))
    typer.echo(f"model        {result['embed_model']} ({result['dim']}-d)")
    modes = ", ".join(f"{mode} ({rows} rows)" for mode, rows in result["embed_modes"].items())
    typer.echo(f"embedded in  {modes or '-'}")
    typer.echo(f"version      {result['version']}, {result['fragments']} fragments")
    for index_info in result["indices"]:
        typer.echo(
            f"index        {index_info['name']}: {index_info['type']} on {index_info['column']}"
            f" ({index_info['unindexed_rows']} rows not yet indexed)"
        )


@app.command()
@handles_errors
def failures(
    db: DbOption = None,
    table: TableOption = None,
    stage: Annotated[str | None, typer.Option("--stage", help="only this stage")] = None,
    json_output: JsonOption = False,
) -> None:
    """The failures table: items that could not be indexed (and warnings), with stage and error."""
    from mmindex.store.reader import Store
    from mmindex.store.sql import sql_string

    settings = _settings(db, table)
    store = Store.from_settings(settings)
    store.lancedb_table()  # noqa: B018 - refuse a missing table with exit 2
    rows = store.failure_rows(f"stage = {sql_string(stage)}" if stage else None)
    if json_output:
        emit_json(
            [
                {
                    "uri": r["uri"],
                    "key": r["key"],
                    "stage": r["stage"],
                    "error": r["error"],
                    "severity": r["severity"],
                    "retryable": r["retryable"],
                    "time": r["failed_at"],
                }
                for r in rows
            ]
        )
        return
    if not rows:
        typer.echo("no failures")
    for r in rows:
        typer.echo(f"{r['severity']:<8}{r['stage']:<9}{r['key']}: {r['error']}")


@app.command()
@handles_errors
def demo(
    directory: Annotated[
        Path, typer.Option("--dir", help="where the sample corpus and its database go")
    ] = Path("mmindex-demo"),
    model: Annotated[
        str | None, typer.Option("--model", help="a real CLIP model id or directory instead of the toy")
    ] = None,
    caption_model: Annotated[
        str | None,
        typer.Option("--caption-model", help="captioner [toy-captioner; with --model, the BLIP default]"),
    ] = None,
    images: Annotated[int, typer.Option("--images", min=8, help="size of the sample corpus")] = 48,
    finetune: Annotated[
        bool, typer.Option("--finetune", help="teach the toy CLIP three new colours and show before/after")
    ] = False,
) -> None:
    """Index a generated sample corpus of coloured shapes, caption the images without a caption and
    run a few queries, offline. With --finetune: fine-tune the toy CLIP on shapes in colours it never
    saw, and compare its search results before and after."""
    from mmindex.demo import (
        DEMO_PROMPTS,
        prepare_corpus,
        show_captions,
        show_generated,
        show_queries,
        table_for,
    )
    from mmindex.query.search import Searcher
    from mmindex.runner import runner_named
    from mmindex.store.reader import Store

    if finetune:
        _finetune_demo(directory)
        return
    corpus = prepare_corpus(directory, images)
    db, table = str(directory / "db"), table_for(model)
    captioner = caption_model or ("toy-captioner" if model is None else None)
    typer.echo(
        f"sample corpus: {corpus} ({images} generated images, some without captions, a few broken files)"
    )
    typer.echo(f"model: {model or 'toy-clip (trained on generated shapes, shipped with mmindex)'}")
    job = IndexJob(
        source=str(corpus),
        db=db,
        table=table,
        model=model or "toy-clip",
        caption_missing=True,
        caption_model=captioner,
    )
    report = runner_named().run(job, progress_bar=sys.stderr.isatty())
    typer.echo("\n".join(_summary(report)))
    searcher = Searcher(Store(db, table))
    show_captions(searcher, echo=typer.echo)
    show_queries(searcher, corpus, echo=typer.echo)
    if model is None:  # the toy generator draws for the toy CLIP's vocabulary
        generate = GenerateJob(
            prompts=list(DEMO_PROMPTS), out=str(directory / "generated"), n=2, model="toy-generator",
            size="128x128", db=db, table=table, embed_model="toy-clip",
        )  # fmt: skip
        made = runner_named().run(generate, progress_bar=False)
        typer.echo(
            f"\ngenerated {made['generated']} images with toy-generator into {generate.out} "
            "(indexed as synthetic)"
        )
        show_generated(Store(db, table), DEMO_PROMPTS, echo=typer.echo)
    typer.echo(f'\nexplore: mmindex search "a red circle" --db {db} --table {table}')
    typer.echo(f'         mmindex search --text-only "blue star" --db {db} --table {table}')
    typer.echo(f"         mmindex serve --db {db} --table {table}   # a search page on 127.0.0.1:8000")


def _finetune_demo(directory: Path) -> None:
    import shutil

    from mmindex.demo import FINETUNE_OPTIONS, prepare_finetune_corpus, show_new_colour_queries
    from mmindex.ingest.reembed import ReembedOptions, run_reembed
    from mmindex.models.clip import ClipEmbedder
    from mmindex.query.handle import ImageIndex
    from mmindex.query.search import Searcher
    from mmindex.runner import runner_named
    from mmindex.store import generations
    from mmindex.store.reader import Store
    from mmindex.store.writer import open_writer

    corpus = prepare_finetune_corpus(directory)
    db, out = str(directory / "db"), directory / "finetuned"
    typer.echo(f"corpus: {corpus} (captioned shapes; brown, cyan and magenta are new to the toy CLIP)")
    runner = runner_named()
    progress = sys.stderr.isatty()
    runner.run(IndexJob(source=str(corpus), db=db, table="shapes", model="toy-clip"), progress_bar=progress)
    shutil.rmtree(out, ignore_errors=True)  # the demo's own output from an earlier run
    job = FinetuneJob(db=db, table="shapes", out=str(out), **FINETUNE_OPTIONS)  # type: ignore[arg-type]
    report = runner.run(job, progress_bar=progress)
    typer.echo("\n" + "\n".join(report["summary"]))
    # the documented path: the tuned model's vectors beside the base's, compared, then switched to
    store = Store(db, "shapes")
    base = ImageIndex(store).generations()[0]["name"]
    _, built = run_reembed(store, ClipEmbedder.load(str(out)), ReembedOptions(name="tuned"))
    typer.echo(f"\nre-embedded the table with the tuned model: generation {built.name} ({built.state})\n")
    typer.echo("\n".join(ImageIndex(store).compare(base, "tuned").lines()[:9]))
    show_new_colour_queries(Searcher(store), Searcher(store, generation="tuned"), typer.echo)
    with open_writer(store) as writer:
        generations.activate(writer.images, "tuned")
    typer.echo(f"\nactivated {built.name}; `mmindex activate {base} --db {db} --table shapes` rolls back")
    typer.echo(f"the model: {out} (README.md is its model card, metrics.json its figures)")
    typer.echo(f'explore: mmindex search "a magenta star" --db {db} --table shapes')


def main() -> None:
    # Prefect's console shows warnings only (its run logs still reach the API at INFO); stdout stays ours.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if not os.environ.get("PREFECT_API_URL"):
        # Prefect's temporary per-run server is stopped while it may still be recording the last task
        # runs; its complaints about that would end every run with a traceback.
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
    app()


if __name__ == "__main__":
    main()
