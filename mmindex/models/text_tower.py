"""A dual encoder loaded to answer text queries and nothing else.

What `mmindex search "TEXT"` loads in a fresh process: the text half of the model and its tokenizer,
but not the image processor, and no probe passes to choose a numeric mode: text queries run in fp32,
the most exact mode, whatever mode embedded the table. A CLIP checkpoint on disk runs in plain torch
(mmindex.models.clip_text), without transformers' import graph (2-3 s); any other dual encoder loads
with transformers' `AutoModel` (the whole model: a text-only class exists for some families only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mmindex.errors import ModelError, first_line
from mmindex.models.resolve import ModelRef, pick_device, resolve_model


class TextTower:
    """Embeds texts into a dual encoder's space, as `ClipEmbedder.embed_texts` does in fp32."""

    def __init__(
        self, features: Callable[[Sequence[str]], Any], ref: ModelRef, device: Any, *, lean: bool
    ) -> None:
        """`features` maps texts to their [B, dim] features (a torch tensor, not yet unit length)."""
        self._features = features
        self.model_id = ref.name
        self.device = device
        self.lean = lean  # run in plain torch, without transformers

    @classmethod
    def load(cls, reference: str, *, device: str = "auto") -> TextTower:
        """Load a model's text tower by hub id, directory or toy name; ModelError with one line."""
        from mmindex.models.clip_text import LeanClipText, lean_text_files

        ref = resolve_model(reference)
        files = lean_text_files(ref)
        if files is None:
            return cls._with_transformers(ref, device)
        torch_device = pick_device(device)
        try:
            lean = LeanClipText(files, torch_device)
        except (ValueError, OSError):  # weights this module does not run: transformers does
            return cls._with_transformers(ref, device)
        return cls(lambda texts: lean.features(lean.token_ids(texts)), ref, torch_device, lean=True)

    @classmethod
    def _with_transformers(cls, ref: ModelRef, device: str) -> TextTower:
        from mmindex.models.clip import (
            check_embedding_config,
            load_parts,
            pooled_output,
            text_context,
            text_inputs,
        )

        check_embedding_config(ref)
        torch_device = pick_device(device)
        model, tokenizer, _ = load_parts(ref, images=False)
        try:
            model = model.eval().to(torch_device)
        except RuntimeError as exc:
            raise ModelError(f"model {ref.name!r} cannot run on {torch_device}: {first_line(exc)}") from exc
        model_type = getattr(model.config, "model_type", "")
        max_tokens = text_context(model.config, tokenizer)

        def features(texts: Sequence[str]) -> Any:
            inputs = text_inputs(tokenizer, texts, max_tokens, model_type, torch_device)
            return pooled_output(model.get_text_features(**inputs))

        return cls(features, ref, torch_device, lean=False)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> [B, dim] float32 unit vectors (truncated to the model's context length)."""
        import torch

        from mmindex.models.clip import unit_vectors

        with torch.inference_mode():
            vectors: np.ndarray = unit_vectors(self._features(texts)).cpu().numpy()
        return vectors
