"""What a fine-tune optimises: the contrastive loss, which parameters train, LoRA adapters, WiSE-FT.

The loss is CLIP's symmetric cross-entropy with one change: captions that are identical within a
batch are all right answers (a multi-positive target), since treating a second "a red circle" as a
wrong answer teaches the model to tell apart images that its captions say are the same.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from mmindex.errors import ConfigError

MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps its learned temperature at 100
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
TRAIN_PARTS = "full, text, vision, last:N or lora"
_LAST = re.compile(r"^last:(\d+)$")


@dataclass(frozen=True)
class TrainPart:
    """Which parameters a fine-tune updates: `kind` is full, text, vision, last or lora."""

    kind: str
    layers: int = 0  # for last:N
    lora_rank: int = 8

    @classmethod
    def parse(cls, text: str) -> TrainPart:
        text = text.strip().lower()
        if text in ("full", "text", "vision", "lora"):
            return cls(text)
        match = _LAST.match(text)
        if match and int(match.group(1)) >= 1:
            return cls("last", layers=int(match.group(1)))
        raise ConfigError(f"--train-part must be {TRAIN_PARTS} (N >= 1), got {text!r}")

    def __str__(self) -> str:
        return f"last:{self.layers}" if self.kind == "last" else self.kind

    @property
    def default_lr(self) -> float:
        """Low for updating pretrained weights (large steps wipe out what CLIP knows); higher for
        LoRA adapters, which start at zero and carry no pretrained knowledge of their own."""
        return 1e-4 if self.kind == "lora" else 1e-5


def contrastive_loss(image_embeds: Any, text_embeds: Any, logit_scale: Any, captions: Sequence[str]) -> Any:
    """Symmetric InfoNCE over unit vectors, with every identical caption in the batch a positive."""
    import torch
    import torch.nn.functional as F

    logits = logit_scale.exp().float() * image_embeds.float() @ text_embeds.float().T
    order: dict[str, int] = {}
    ids = torch.tensor([order.setdefault(text, len(order)) for text in captions], device=logits.device)
    same = (ids[:, None] == ids[None, :]).to(logits.dtype)
    targets = same / same.sum(dim=1, keepdim=True)  # symmetric, so its columns sum to one too
    image_loss = -(F.log_softmax(logits, dim=1) * targets).sum(dim=1).mean()
    text_loss = -(F.log_softmax(logits, dim=0) * targets).sum(dim=0).mean()
    return (image_loss + text_loss) / 2


def clamp_logit_scale(model: Any) -> None:
    import torch

    scale = getattr(model, "logit_scale", None)
    if scale is not None:
        with torch.no_grad():
            scale.clamp_(0, MAX_LOGIT_SCALE)


def tower_layers(model: Any, tower: str) -> list[Any]:
    """The transformer blocks of one tower (`vision_model` or `text_model`), in order."""
    module = getattr(model, tower, None)
    layers = getattr(getattr(module, "encoder", None), "layers", None)
    if layers is None:
        raise ConfigError(
            f"{type(model).__name__} has no {tower}.encoder.layers; --train-part last:N needs CLIP's layout"
        )
    return list(layers)


def select_trainable(model: Any, part: TrainPart) -> list[str]:
    """Freeze what `part` leaves alone (adding LoRA adapters for `lora`); the names that train."""
    if part.kind == "lora":
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        add_lora(model, part.lora_rank)
    else:
        wanted = _trainable_prefixes(model, part)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(wanted is None or name.startswith(wanted))
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]


def _trainable_prefixes(model: Any, part: TrainPart) -> tuple[str, ...] | None:
    if part.kind == "full":
        return None
    if part.kind == "text":
        return ("text_model.", "text_projection.", "logit_scale")
    if part.kind == "vision":
        return ("vision_model.", "visual_projection.", "logit_scale")
    prefixes = ["text_projection.", "visual_projection.", "logit_scale", "text_model.final_layer_norm."]
    prefixes.append("vision_model.post_layernorm.")
    for tower in ("vision_model", "text_model"):
        layers = tower_layers(model, tower)
        if part.layers > len(layers):
            raise ConfigError(f"--train-part last:{part.layers}: the {tower} has only {len(layers)} layers")
        prefixes += [f"{tower}.encoder.layers.{i}." for i in range(len(layers) - part.layers, len(layers))]
    return tuple(prefixes)


def decay_groups(model: Any, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on matrices only, not on biases, norms or the temperature
    (as CLIP's and open_clip's training do)."""
    decay: list[Any] = []
    no_decay: list[Any] = []
    for _, parameter in model.named_parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def add_lora(model: Any, rank: int, alpha: float | None = None) -> int:
    """Wrap every attention projection's weight in a LoRA parametrization; returns how many."""
    import torch
    from torch.nn.utils import parametrize

    class Delta(torch.nn.Module):
        def __init__(self, out_features: int, in_features: int) -> None:
            super().__init__()
            self.lora_a = torch.nn.Parameter(torch.randn(rank, in_features) / math.sqrt(in_features))
            self.lora_b = torch.nn.Parameter(torch.zeros(out_features, rank))
            self.scale = (alpha or 2 * rank) / rank

        def forward(self, weight: Any) -> Any:
            return weight + self.scale * (self.lora_b @ self.lora_a).to(weight.dtype)

    wrapped = 0
    for name, module in list(model.named_modules()):
        if name.rsplit(".", 1)[-1] in LORA_TARGETS and isinstance(module, torch.nn.Linear):
            parametrize.register_parametrization(module, "weight", Delta(*module.weight.shape))
            wrapped += 1
    if not wrapped:
        raise ConfigError(f"{type(model).__name__} has no {'/'.join(LORA_TARGETS)} layers for LoRA")
    return wrapped


def plain_state(model: Any) -> dict[str, Any]:
    """The model's weights as the plain architecture names them, LoRA updates merged in, on the CPU."""
    state: dict[str, Any] = {}
    for name, value in model.state_dict().items():
        if ".parametrizations." not in name:
            state[name] = value.detach().cpu().clone()
    for name, module in model.named_modules():
        if hasattr(module, "parametrizations"):
            for attribute in module.parametrizations:
                state[f"{name}.{attribute}"] = getattr(module, attribute).detach().cpu().clone()
    return state


def interpolate(base: dict[str, Any], tuned: dict[str, Any], alpha: float) -> dict[str, Any]:
    """WiSE-FT: `(1 - alpha) * base + alpha * tuned` for floating-point weights (others from `tuned`)."""
    return {
        name: (base[name] * (1 - alpha) + value * alpha) if value.is_floating_point() else value
        for name, value in tuned.items()
    }


def trainable_count(model: Any) -> int:
    return sum(p.numel() for p in _trainable(model))


def _trainable(model: Any) -> Iterator[Any]:
    return (p for p in model.parameters() if p.requires_grad)
