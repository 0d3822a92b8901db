"""Finding models: a Hugging Face hub id, a local directory, or a bundled toy model; and the device.

`resolve_model` and `check_model_config` are cheap (no weights) so a command can refuse a bad model
before it starts any work. Recorded model names are hub ids, absolute directories, or `toy-*` names.
"""

from __future__ import annotations

import functools
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmindex.errors import ModelError

TOY_MODELS = {
    "toy-clip": Path(__file__).parent / "toy" / "weights" / "clip",
    "toy-captioner": Path(__file__).parent / "toy" / "weights" / "captioner",
}
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CPU_BF16_MIN_GAIN = 1.5  # `auto` picks bf16 on a CPU whose bf16 matrix products are this much faster
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
        raise ModelError(f"cannot load model {ref.name!r}: {first_line(exc)}") from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


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


def check_precision(precision: str, quantize: str | None) -> None:
    """Refuse a precision or quantisation mmindex does not offer, or a combination that cannot run."""
    if precision not in PRECISIONS:
        raise ModelError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if quantize not in (None, "none", "int8"):
        raise ModelError(f"--quantize must be int8 or none, got {quantize!r}")
    if quantize == "int8" and precision not in ("auto", "fp32"):
        raise ModelError(f"--quantize int8 computes in fp32; drop --precision {precision}")


def autocast_dtype(device: Any, precision: str) -> Any | None:
    """The autocast dtype for a device and precision (`auto`, `fp32`, `bf16`, `fp16`); None = fp32.

    `auto` is bf16 (or fp16 where bf16 is missing) on CUDA, bf16 on a CPU that multiplies bf16
    matrices natively and measurably faster than fp32 (AVX512-BF16, AMX), and fp32 everywhere else.
    """
    import torch

    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and cpu_bf16_is_faster():
        return torch.bfloat16
    return None


def compute_label(model: str, device: Any, autocast: Any | None, *, int8: bool = False) -> str:
    """How a model runs, for run reports: "openai/clip-vit-base-patch32 on cpu in bf16"."""
    reduced = {"torch.bfloat16": "bf16", "torch.float16": "fp16"}
    number_format = "int8" if int8 else reduced.get(str(autocast), "fp32")
    return f"{model} on {device} in {number_format}"


@functools.cache
def cpu_bf16_is_faster() -> bool:
    """Whether this CPU has native bf16 arithmetic and it beats fp32 by CPU_BF16_MIN_GAIN.

    Without native support bf16 is emulated and slower than fp32 (0.58x measured on one such
    CPU); with it, transformer towers run 2-3x faster. A matrix-product probe (under 0.1 s) with the current
    torch threads settles the cases the CPU flags alone cannot.
    """
    import torch

    capabilities: dict[str, Any] = getattr(torch.cpu, "get_capabilities", dict)()
    if not (capabilities.get("avx512_bf16") or capabilities.get("amx_bf16")):
        return False
    return _bf16_matmul_speedup() >= CPU_BF16_MIN_GAIN


def _bf16_matmul_speedup(rows: int = 256, width: int = 768, repeats: int = 6) -> float:
    import torch

    inputs = torch.randn(rows, width)
    weight = torch.randn(4 * width, width)

    def seconds(bf16: bool) -> float:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            torch.nn.functional.linear(inputs, weight)  # warm-up: kernel selection, weight cast
            start = time.perf_counter()
            for _ in range(repeats):
                torch.nn.functional.linear(inputs, weight)
            return time.perf_counter() - start

    return seconds(False) / max(seconds(True), 1e-9)


def quiet_transformers() -> None:
    """Silence load reports and progress bars; keep real warnings."""
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
