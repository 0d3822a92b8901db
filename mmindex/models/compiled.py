"""torch.compile for the image tower, used only where it pays: a long run, measured faster, and
giving the same embeddings as the eager pass.

Compiling ViT-B/32 costs 15-55 s on 2 CPU cores (less with inductor's on-disk cache warm) and made
forward passes about 1.12x faster there (bench/modes.py, balanced A/B), so it pays only for runs
with minutes of embedding left. `--compile auto` (the default) therefore waits until the work left would take
COMPILE_WORTH_S in eager mode, compiles for the run's batch size (a short last batch runs eagerly,
as a recompile for it would cost more than it saves), times the next batches, and keeps the
compiled pass only if it beats the eager rate by MIN_GAIN. Whether a run compiles depends on timings,
so `auto` compiles only where that cannot show in the table: a compiled pass whose embeddings differ
from the eager ones by more than SAME_RESULT (as bf16 ones do, by ~2e-3) is refused at once. A compile
that fails leaves the eager pass in place. `on` compiles from the first batch and keeps a pass that
drifts (still with the fallbacks for failures); `off` never compiles.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from mmindex.errors import ConfigError, first_line

log = logging.getLogger(__name__)

COMPILE_SETTINGS = ("auto", "on", "off")
COMPILE_WORTH_S = 300.0
MIN_GAIN = 1.05
JUDGE_BATCHES = 3  # compiled batches timed before the verdict
SAME_RESULT = 1e-5  # the largest difference between two runs' embeddings that counts as the same


def check_compile(setting: str) -> None:
    if setting not in COMPILE_SETTINGS:
        raise ConfigError(f"--compile must be one of {', '.join(COMPILE_SETTINGS)}, got {setting!r}")


class Compilable(Protocol):
    def compile(self, batch_size: int, *, max_drift: float | None = None) -> str | None: ...

    def uncompile(self) -> None: ...


def compile_forward(forward: Any) -> Any:
    """`forward` compiled for fixed shapes (one graph per batch size)."""
    import torch

    return torch.compile(forward, dynamic=False)


@dataclass
class CompilePolicy:
    """Decides, batch by batch, when a run compiles its embedder and whether it keeps the result;
    what happened ends up in `notes` (the run report's)."""

    setting: str
    batch_size: int
    notes: list[str] = field(default_factory=list)
    state: str = "eager"  # eager -> judging -> compiled | given up
    _eager: list[float] = field(default_factory=list)  # seconds per image, full batches
    _compiled: list[float] = field(default_factory=list)

    def after_batch(self, model: Compilable, images: int, seconds: float, remaining: int | None) -> None:
        """Record one embed call (`images` in `seconds`, at least one full batch to count);
        `remaining`: images still planned after it (None: unknown)."""
        if self.setting == "off" or self.state == "given up":
            return
        lost = getattr(model, "compile_lost", None)
        if lost is not None and self.state in ("judging", "compiled"):
            self.state = "given up"
            self.notes.append(f"the compiled image tower failed mid-run, so the rest ran eagerly: {lost}")
            return
        if images < self.batch_size or seconds <= 0:
            return
        if self.state == "eager":
            self._eager.append(seconds / images)
            eager_left = (remaining or 0) * _median(self._eager)
            if self.setting == "on" or eager_left >= COMPILE_WORTH_S:
                self._compile(model)
        elif self.state == "judging":
            self._compiled.append(seconds / images)
            if len(self._compiled) >= JUDGE_BATCHES:
                self._judge(model)

    def _compile(self, model: Compilable) -> None:
        why_not = model.compile(self.batch_size, max_drift=SAME_RESULT if self.setting == "auto" else None)
        if why_not is None:
            self.state = "judging"
            return
        self.state = "given up"
        self.notes.append(f"the image tower ran eagerly: {why_not}")
        log.warning("the image tower runs eagerly: %s", why_not)

    def _judge(self, model: Compilable) -> None:
        gain = _median(self._eager) / _median(self._compiled)
        if gain >= MIN_GAIN:
            self.state = "compiled"
            self.notes.append(f"image tower compiled by torch.compile: {gain:.2f}x the eager rate")
            return
        model.uncompile()
        self.state = "given up"
        self.notes.append(f"torch.compile did not pay off ({gain:.2f}x the eager rate); ran eagerly")


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0


def describe_failure(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}"
