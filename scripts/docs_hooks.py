"""MkDocs hook: the command-line reference is generated from the `mmindex` command itself.

docs/reference/cli.md holds the marker `<!-- mmindex:cli -->`; at build time it becomes one section
per command (its help, usage and every option with its default), read from the click command that
typer builds, so the page can never drift from the flags.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

MARKER = "<!-- mmindex:cli -->"
FLOWS_MARKER = "<!-- mmindex:flows -->"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, cli_reference())
    if FLOWS_MARKER in markdown:
        markdown = markdown.replace(FLOWS_MARKER, flows_table())
    return markdown


def flows_table() -> str:
    """One row per kind of job, from the registry: its command, flow, entrypoint and Python function."""
    from mmindex.run import JOB_KINDS

    rows = [
        "| command | Prefect flow | entrypoint in `flows/jobs.py` | Python | deploy.py |",
        "|---|---|---|---|---|",
    ]
    for name, kind in JOB_KINDS.items():
        cells = [
            f"`mmindex {name}`",
            f"`{kind.flow}`",
            f"`{kind.flow_function}`",
            f"`mmindex.{name}()`",
            "scheduled" if kind.deployed else "",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def cli_reference() -> str:
    import typer.main

    from mmindex.cli import app

    group: Any = typer.main.get_command(app)  # typer's own copy of click: duck-typed below
    root = group.context_class(group, info_name="mmindex")
    sections = []
    for name, command in group.commands.items():
        if command.hidden:
            continue
        context = command.context_class(command, info_name=name, parent=root)
        pieces = [argument_name(piece) for piece in command.collect_usage_pieces(context)]
        usage = " ".join(["mmindex", name, *pieces])
        sections.append(
            "\n".join(
                [
                    f"## mmindex {name}",
                    "",
                    f"```text\n{usage}\n```",
                    "",
                    help_text(command.help or ""),
                    "",
                    parameter_table(command, context),
                ]
            )
        )
    return "\n\n".join(sections) + "\n"


def argument_name(piece: str) -> str:
    """typer writes arguments as `{source}` or `[prompts]...`; `--help` readers know SOURCE, [PROMPTS]."""
    piece = re.sub(r"\{(\w+)\}", lambda found: found.group(1).upper(), piece)
    return re.sub(r"\[([a-z_]+)\]", lambda found: f"[{found.group(1).upper()}]", piece)


def help_text(text: str) -> str:
    """A command's docstring as prose: typer's `\\b` (keep line breaks) markers dropped."""
    return inspect.cleandoc(text).replace("\b\n", "").strip()


def parameter_table(command: Any, context: Any) -> str:
    """One row per argument and option, from the same help records `--help` prints."""
    rows = ["| argument or option | what it does |", "|---|---|"]
    for parameter in command.params:
        record = parameter.get_help_record(context)
        if record is None or getattr(parameter, "hidden", False):
            continue
        name, text = record
        text = cell(text).replace("[", "\\[")  # "[default: 7d]" is no link
        rows.append(f"| `{cell(name)}` | {text} |")
    return "\n".join(rows)


def cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")
