"""Number formats: which precision a model computes in on a device, and which kind of CPU this is.

`auto` never times anything: a timing race decided per process gave one table, or one run's workers,
embeddings in different number formats on a busy machine. It follows the CPU's kind instead (its
capability flags, or MMINDEX_CPU_KIND), through the verdicts in `NATIVE_BF16_KINDS`, measured once
per kind and written down here.
"""

from __future__ import annotations

import functools
import os
from typing import Any

from mmindex.errors import ConfigError, ModelError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")

CPU_KIND_ENV = "MMINDEX_CPU_KIND"
# CPUs whose bf16 matrix products run natively: ViT-B/32's image tower ran 2.6x faster in bf16 than
# in fp32 on an AMD EPYC with AVX512-BF16 (docs/concepts/models.md); AMX is faster still. Every other
# kind emulates bf16 at 0.14-0.16x of fp32 (AVX2 EPYC, bench/results/modes.md), so `auto` is fp32.
NATIVE_BF16_KINDS = ("amx", "avx512_bf16")
CPU_KINDS = (*NATIVE_BF16_KINDS, "avx512", "avx2", "default")


def check_precision(precision: str, quantize: str | None) -> None:
    """Refuse a precision or quantisation mmindex does not offer, or a combination that cannot run."""
    if precision not in PRECISIONS:
        raise ModelError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if quantize not in (None, "none", "int8"):
        raise ModelError(f"--quantize must be int8 or none, got {quantize!r}")
    if quantize == "int8" and precision not in ("auto", "fp32"):
        raise ModelError(f"--quantize int8 computes in fp32; drop --precision {precision}")


def cpu_kind() -> str:
    """This CPU's kind for `auto`: `amx`, `avx512_bf16`, else torch's kernel level (`avx512`, `avx2`,
    `default`, ...). MMINDEX_CPU_KIND overrides the detection: a sharded or Ray run's workers get the
    driver's, and tests force the kinds their machine is not."""
    forced = os.environ.get(CPU_KIND_ENV, "").strip().lower()
    if forced:
        if forced not in CPU_KINDS:
            raise ConfigError(f"{CPU_KIND_ENV} must be one of {', '.join(CPU_KINDS)}, got {forced!r}")
        return forced
    return detected_cpu_kind()


@functools.cache
def detected_cpu_kind() -> str:
    """The kind this machine's CPU flags say (MMINDEX_CPU_KIND aside)."""
    import torch

    capabilities: dict[str, Any] = getattr(torch.cpu, "get_capabilities", dict)()
    if capabilities.get("amx_bf16"):
        return "amx"
    if capabilities.get("avx512_bf16"):
        return "avx512_bf16"
    return str(torch.backends.cpu.get_cpu_capability()).lower()


def native_bf16(kind: str | None = None) -> bool:
    """Whether a CPU of `kind` (default: this one) multiplies bf16 matrices natively."""
    return (kind or cpu_kind()) in NATIVE_BF16_KINDS


def autocast_dtype(device: Any, precision: str) -> Any | None:
    """The autocast dtype for a device and precision (`auto`, `fp32`, `bf16`, `fp16`); None = fp32.

    `auto` is bf16 (or fp16 where bf16 is missing) on CUDA, bf16 on a CPU with native bf16
    (AVX512-BF16, AMX), and fp32 everywhere else.
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
    if device.type == "cpu" and native_bf16():
        return torch.bfloat16
    return None


def compute_label(model: str, device: Any, autocast: Any | None, *, int8: bool = False) -> str:
    """How a model runs, for run reports: "openai/clip-vit-base-patch32 on cpu in bf16"."""
    reduced = {"torch.bfloat16": "bf16", "torch.float16": "fp16"}
    number_format = "int8" if int8 else reduced.get(str(autocast), "fp32")
    return f"{model} on {device} in {number_format}"
