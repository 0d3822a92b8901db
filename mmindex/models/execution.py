"""How a model's forward passes run: the number format of its weights and arithmetic, chosen at load.

`--precision auto` picks, per device, among the modes that can be fast there:

- CUDA: fp16 weights, then bf16 weights, then fp32: the first whose embeddings stay right wins
  (half precision is always faster on tensor cores, so nothing needs timing).
- A CPU with native bf16 (AVX512-BF16 or AMX) that multiplies bf16 matrices measurably faster than
  fp32: bf16 weights, bf16 autocast and fp32 are each timed on the model itself, interleaved, and the
  fastest that stays right wins. Which of the two bf16 forms is faster differs between CPUs and
  torch builds, so it is measured, not assumed. The verdict is cached per CPU, torch and model.
- Any other CPU: fp32 (bf16 there is emulated, several times slower).

"Right" means every probe embedding, image and text, within cosine `MIN_COSINE` of fp32's on the
same inputs and finite; a mode that fails falls back to the next one.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmindex.models.precision import cpu_bf16_is_faster

MIN_COSINE = 0.99
PROBE_IMAGES = 4
PROBE_REPEATS = 3


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


@dataclass(frozen=True)
class Choice:
    """The candidates for a device and precision, and whether they must be timed to choose."""

    modes: tuple[Mode, ...]
    timed: bool


def candidates(device_type: str, precision: str, *, fast_bf16: bool, cuda_bf16: bool = True) -> Choice:
    """The modes `precision` allows on a device, best first. `fast_bf16`: the CPU has native bf16
    that beats fp32 (the probe in mmindex.models.precision); `cuda_bf16`: the GPU supports bf16."""
    if precision == "fp32":
        return Choice((FP32,), timed=False)
    if device_type == "cuda":
        if precision == "bf16":
            return Choice((BF16_WEIGHTS,), timed=False)
        if precision == "fp16":
            return Choice((FP16_WEIGHTS,), timed=False)
        return Choice((FP16_WEIGHTS, *([BF16_WEIGHTS] if cuda_bf16 else []), FP32), timed=False)
    if precision == "fp16":
        return Choice((FP16_AUTOCAST,), timed=False)
    if precision == "bf16":
        return Choice((BF16_WEIGHTS, BF16_AUTOCAST), timed=fast_bf16)
    if fast_bf16:
        return Choice((BF16_WEIGHTS, BF16_AUTOCAST, FP32), timed=True)
    return Choice((FP32,), timed=False)


Forward = Callable[[Any, Mode], Any]  # (model in the mode's weights, mode) -> [N, dim] embeddings


def choose_mode(
    model: Any,
    device: Any,
    precision: str,
    probes: Sequence[Forward],
    *,
    cache_key: str | None = None,
) -> Mode:
    """The mode to run `model` in (already on `device`, in fp32). Each probe is a forward pass over
    fixed inputs; a mode is kept only if every probe's embeddings stay within MIN_COSINE of fp32's.
    Where the choice needs timing, the first probe's passes are timed and the verdict cached."""
    import torch

    choice = candidates(
        device.type,
        precision,
        fast_bf16=device.type == "cpu" and cpu_bf16_is_faster(),
        cuda_bf16=device.type == "cuda" and torch.cuda.is_bf16_supported(),
    )
    if choice.modes == (FP32,):
        return FP32
    cache = _VerdictCache(cache_key, choice) if choice.timed and cache_key else None
    if cache is not None and (cached := cache.get()) is not None:
        return cached
    with torch.inference_mode():
        reference = [probe(model, FP32).float() for probe in probes]
        if not choice.timed:  # the first mode that stays right
            return next(
                (m for m in choice.modes if _stays_right(_in_weights(model, m), m, probes, reference)), FP32
            )
        variants = {mode: _in_weights(model, mode) for mode in choice.modes}
        right = [mode for mode in choice.modes if _stays_right(variants[mode], mode, probes, reference)]
        chosen = FP32 if not right else _fastest(variants, right, probes[0])
    if cache is not None:
        cache.put(chosen)
    return chosen


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


def _fastest(variants: dict[Mode, Any], modes: list[Mode], probe: Forward) -> Mode:
    best = dict.fromkeys(modes, float("inf"))
    for _ in range(PROBE_REPEATS):  # interleaved, so a drifting machine slows every mode alike
        for mode in modes:
            start = time.perf_counter()
            probe(variants[mode], mode)
            best[mode] = min(best[mode], time.perf_counter() - start)
    return min(modes, key=best.__getitem__)


def model_fingerprint(name: str, config: Any) -> str:
    """A cache key for a model's compute shape: its name and configuration."""
    text = config.to_json_string() if hasattr(config, "to_json_string") else repr(config)
    return f"{name}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


class _VerdictCache:
    """Timed verdicts, one JSON file, keyed by CPU, torch version, model and the candidates."""

    def __init__(self, model_key: str, choice: Choice) -> None:
        self.choice = choice
        self.key = self._key(model_key, choice)
        root = os.environ.get("MMINDEX_CACHE_DIR") or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mmindex"
        )
        self.path = Path(root) / "execution.json"

    @staticmethod
    def _key(model_key: str, choice: Choice) -> str:
        import torch

        modes = ",".join(mode.name for mode in choice.modes)
        return (
            f"{_cpu_name()}|torch {torch.__version__}|threads {torch.get_num_threads()}|{model_key}|{modes}"
        )

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self) -> Mode | None:
        mode = MODES.get(self._load().get(self.key, ""))
        return mode if mode in self.choice.modes else None

    def put(self, mode: Mode) -> None:
        data = self._load()
        data[self.key] = mode.name
        with contextlib.suppress(OSError):  # a read-only home only costs the next load a probe
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary = self.path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps(data, indent=1))
            temporary.replace(self.path)


@functools.cache
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or platform.machine()


def _dtype(name: str) -> Any:
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
