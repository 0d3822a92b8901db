"""Finding models: a Hugging Face hub id, a local directory, or a bundled toy model; and the device.

`resolve_model` and `check_model_config` are cheap (no weights) so a command can refuse a bad model
before it starts any work. Recorded model names are hub ids, absolute directories, or `toy-*` names.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmindex.errors import ModelError, first_line
from mmindex.toy import TOY_MODELS

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


@dataclass(frozen=True)
class ModelRef:
    """`name` is what a table records; `location` is what from_pretrained receives."""

    name: str
    location: str
    local: bool


def resolve_model(reference: str) -> ModelRef:
    """A model reference as given by a user: hub id, directory (absolute or relative), or toy name."""
    reference = reference.strip()
    if reference in TOY_MODELS:
        directory = TOY_MODELS[reference]
        if not (directory / "config.json").is_file():
            raise ModelError(
                f"the bundled {reference} weights are missing from {directory}; reinstall mmindex"
            )
        return ModelRef(reference, str(directory), True)
    path = Path(reference).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is not a model directory: it has no config.json")
        absolute = str(path.resolve())
        return ModelRef(absolute, absolute, True)
    if path.exists():
        raise ModelError(f"{reference} is a file; give a model directory or a Hugging Face model id")
    if reference.startswith((".", "/", "~")) or not _HUB_ID.match(reference):
        raise ModelError(
            f"model directory {reference} does not exist (and it is not a Hugging Face model id)"
        )
    return ModelRef(reference, reference, False)


def load_config(ref: ModelRef) -> Any:
    """The model's transformers config, downloading only config.json for a hub id not yet cached."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(ref.location, local_files_only=ref.local)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {ref.name!r}: {first_line(exc)}") from exc


def pick_device(requested: str) -> Any:
    """The torch device for `auto`, `cpu`, `cuda` or `mps`; ModelError if the device is not there."""
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"--device cuda, but this torch ({torch.__version__}) sees no CUDA device")
    if requested == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ModelError("--device mps, but this torch sees no Apple GPU")
    return torch.device(requested)


def quiet_transformers() -> None:
    """Silence load reports and progress bars; keep real warnings."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
