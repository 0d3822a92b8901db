"""A dual encoder loaded to answer text queries and nothing else.

What `mmindex search "TEXT"` loads in a fresh process: the model and tokenizer, but not the image
processor (its import can take over a second), and no probe passes to choose a numeric mode: text
queries run in fp32, the most exact mode, whatever mode embedded the table. The weights are the whole
model's (`AutoModel` works for every dual encoder; a text-only class exists for some families only):
for ViT-B/32 from a warm disk cache that load is 0.15 s, the imports around it 5 s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mmindex.errors import ModelError, first_line
from mmindex.models.clip import (
    check_embedding_config,
    load_parts,
    pooled_output,
    text_context,
    text_inputs,
    unit_vectors,
)
from mmindex.models.resolve import ModelRef, pick_device, resolve_model


class TextTower:
    """Embeds texts into a dual encoder's space, as `ClipEmbedder.embed_texts` does in fp32."""

    def __init__(self, model: Any, tokenizer: Any, ref: ModelRef, device: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.model_id = ref.name
        self.device = device
        self.model_type = getattr(model.config, "model_type", "")
        self.max_text_tokens = text_context(model.config, tokenizer)

    @classmethod
    def load(cls, reference: str, *, device: str = "auto") -> TextTower:
        """Load a model's text tower by hub id, directory or toy name; ModelError with one line."""
        ref = resolve_model(reference)
        check_embedding_config(ref)
        torch_device = pick_device(device)
        model, tokenizer, _ = load_parts(ref, images=False)
        try:
            return cls(model.eval().to(torch_device), tokenizer, ref, torch_device)
        except RuntimeError as exc:
            raise ModelError(f"model {ref.name!r} cannot run on {torch_device}: {first_line(exc)}") from exc

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> [B, dim] float32 unit vectors (truncated to the model's context length)."""
        import torch

        inputs = text_inputs(self.tokenizer, texts, self.max_text_tokens, self.model_type, self.device)
        with torch.inference_mode():
            vectors: np.ndarray = (
                unit_vectors(pooled_output(self.model.get_text_features(**inputs))).cpu().numpy()
            )
        return vectors
