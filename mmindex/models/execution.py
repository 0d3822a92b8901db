"""How a model's forward passes run: the number format of its weights and arithmetic, chosen at load.

`--precision auto` picks, per device, from a fixed list of candidates, best first:

- CUDA: fp16 weights, then bf16 weights, then fp32.
- A CPU with native bf16 (AVX512-BF16 or AMX, by its flags or MMINDEX_CPU_KIND): bf16 weights, then
  bf16 autocast, then fp32.
- Any other CPU: fp32 (bf16 there is emulated, several times slower).

The first candidate that stays right wins: every probe embedding, image and text, within cosine
`MIN_COSINE` of fp32's on the same inputs and finite. Nothing is timed, so every process that loads
the same model on the same kind of machine runs it in the same mode: a table never gets embeddings
in two modes because one process was busier than another.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mmindex.models.precision import native_bf16

MIN_COSINE = 0.99
PROBE_IMAGES = 4


@dataclass(frozen=True)
class Mode:
    """A number format: the weights' dtype and the autocast dtype (None: none)."""

    name: str
    weights: str = "fp32"
    autocast: str | None = None

    def weights_dtype(self) -> Any:
        return _dtype(self.weights)

    def autocast_dtype(self) -> Any | None:
        return None if self.autocast is None else _dtype(self.autocast)

    def autocast_context(self, device: Any) -> Any:
        import torch

        dtype = self.autocast_dtype()
        return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


FP32 = Mode("fp32")
BF16_WEIGHTS = Mode("bf16 weights", weights="bf16")
BF16_AUTOCAST = Mode("bf16 autocast", autocast="bf16")
FP16_WEIGHTS = Mode("fp16 weights", weights="fp16")
FP16_AUTOCAST = Mode("fp16 autocast", autocast="fp16")
MODES = {mode.name: mode for mode in (FP32, BF16_WEIGHTS, BF16_AUTOCAST, FP16_WEIGHTS, FP16_AUTOCAST)}


def autocast_mode(dtype: Any | None) -> Mode:
    """The mode that autocasts to `dtype` (None: fp32) and leaves the weights alone, as training needs."""
    name = {"torch.bfloat16": "bf16 autocast", "torch.float16": "fp16 autocast"}.get(str(dtype), "fp32")
    return MODES[name]


def candidates(
    device_type: str, precision: str, *, native_cpu_bf16: bool, cuda_bf16: bool = True
) -> tuple[Mode, ...]:
    """The modes `precision` allows on a device, best first. `native_cpu_bf16`: the CPU multiplies
    bf16 natively (mmindex.models.precision.native_bf16); `cuda_bf16`: the GPU supports bf16."""
    if precision == "fp32":
        return (FP32,)
    if device_type == "cuda":
        if precision == "bf16":
            return (BF16_WEIGHTS,)
        if precision == "fp16":
            return (FP16_WEIGHTS,)
        return (FP16_WEIGHTS, *([BF16_WEIGHTS] if cuda_bf16 else []), FP32)
    if precision == "fp16":
        return (FP16_AUTOCAST,)
    if precision == "bf16":
        return (BF16_WEIGHTS, BF16_AUTOCAST)
    if native_cpu_bf16:
        return (BF16_WEIGHTS, BF16_AUTOCAST, FP32)
    return (FP32,)


Forward = Callable[[Any, Mode], Any]  # (model in the mode's weights, mode) -> [N, dim] embeddings


def choose_mode(model: Any, device: Any, precision: str, probes: Sequence[Forward]) -> Mode:
    """The mode to run `model` in (already on `device`, in fp32): the first candidate whose probe
    embeddings all stay within MIN_COSINE of fp32's (fp32 when none does). Each probe is a forward
    pass over fixed inputs, so the verdict depends on the model and the machine's kind, never on
    how busy the machine is."""
    import torch

    modes = candidates(
        device.type,
        precision,
        native_cpu_bf16=device.type == "cpu" and native_bf16(),
        cuda_bf16=device.type == "cuda" and torch.cuda.is_bf16_supported(),
    )
    if modes == (FP32,):
        return FP32
    with torch.inference_mode():
        reference = [probe(model, FP32).float() for probe in probes]
        return next((m for m in modes if _stays_right(_in_weights(model, m), m, probes, reference)), FP32)


def apply_mode(model: Any, mode: Mode) -> Any:
    """`model` with its weights in the mode's dtype (in place)."""
    return model if mode.weights == "fp32" else model.to(mode.weights_dtype())


def _in_weights(model: Any, mode: Mode) -> Any:
    return model if mode.weights == "fp32" else copy.deepcopy(model).to(mode.weights_dtype())


def _stays_right(model: Any, mode: Mode, probes: Sequence[Forward], reference: list[Any]) -> bool:
    import torch

    try:
        for probe, expected in zip(probes, reference, strict=True):
            vectors = probe(model, mode).float()
            if not torch.isfinite(vectors).all():
                return False
            cosines = torch.nn.functional.cosine_similarity(vectors, expected, dim=-1)
            if float(cosines.min()) < MIN_COSINE:
                return False
    except RuntimeError:  # a kernel missing for this dtype on this device
        return False
    return True


def _dtype(name: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
