"""One optimisation step of a contrastive fine-tune, and the optimiser and schedule it runs with.

The trainer and the training benchmark both use `TrainingStep`, so the benchmark times exactly what
`mmindex finetune` runs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mmindex.finetuning.objective import clamp_logit_scale, contrastive_loss, decay_groups
from mmindex.models.clip import pooled_output, text_inputs
from mmindex.models.preprocess import model_input


def warmup_cosine(total_steps: int, warmup: float) -> Callable[[int], float]:
    """Learning-rate factor: linear warm-up over `warmup` of the steps, then cosine decay to zero."""
    warmup_steps = max(1, round(total_steps * warmup))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class TrainingStep:
    """AdamW (betas 0.9/0.98, eps 1e-6 as CLIP), gradient norm clipped at 1, warm-up then cosine,
    the temperature clamped after every step; autocast (bf16/fp16, with loss scaling for fp16)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        lr: float,
        weight_decay: float,
        total_steps: int,
        warmup: float,
        autocast: Any | None,
        max_text_tokens: int,
        preprocess: object = None,
    ) -> None:
        import torch

        self.model, self.tokenizer, self.max_text_tokens = model, tokenizer, max_text_tokens
        self.autocast = autocast
        self.preprocess = preprocess  # rescales and normalises uint8 pixels (see models.preprocess)
        self.optimiser = torch.optim.AdamW(
            decay_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6
        )
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimiser, warmup_cosine(total_steps, warmup))
        self.scaler = torch.amp.GradScaler(model.device.type, enabled=autocast == torch.float16)
        self.trainable = [p for p in model.parameters() if p.requires_grad]

    def __call__(self, pixels: np.ndarray, captions: Sequence[str]) -> float:
        """Train on one batch of preprocessed pixels [B, 3, H, W] and their captions; the loss."""
        import torch
        import torch.nn.functional as F

        model = self.model
        model_type = str(getattr(model.config, "model_type", ""))
        inputs = text_inputs(self.tokenizer, captions, self.max_text_tokens, model_type, model.device)
        pixel_tensor = model_input(pixels, self.preprocess, model.device)
        context = (
            torch.autocast(model.device.type, dtype=self.autocast)
            if self.autocast
            else contextlib.nullcontext()
        )
        with context:
            images = F.normalize(pooled_output(model.get_image_features(pixel_values=pixel_tensor)), dim=-1)
            texts = F.normalize(pooled_output(model.get_text_features(**inputs)), dim=-1)
            loss = contrastive_loss(images, texts, model.logit_scale, captions)
        self.optimiser.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimiser)
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.scaler.step(self.optimiser)
        self.scaler.update()
        self.schedule.step()
        clamp_logit_scale(model)
        return float(loss.item())

    def state_dict(self) -> dict[str, Any]:
        return {"optimiser": self.optimiser.state_dict(), "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimiser.load_state_dict(state["optimiser"])
        self.schedule.load_state_dict(state["schedule"])
