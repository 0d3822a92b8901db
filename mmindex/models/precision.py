"""Number formats: which precision a model computes in on a device, and the CPU bf16 probe."""

from __future__ import annotations

import functools
import time
from typing import Any

from mmindex.errors import ModelError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


CPU_BF16_MIN_GAIN = 1.5  # `auto` picks bf16 on a CPU whose bf16 matrix products are this much faster


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
