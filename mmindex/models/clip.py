"""CLIP-style image and text embeddings through transformers: batched, device-aware, L2-normalised.

Any dual-encoder checkpoint whose model exposes `get_image_features` and `get_text_features` works
(CLIP and its relatives: SigLIP, Chinese-CLIP, AltCLIP, MetaCLIP). With `precision="auto"` the
forward passes run under bf16/fp16 autocast on CUDA, under bf16 autocast on a CPU with fast native
bf16, and in fp32 elsewhere; on CPU, int8 dynamic quantisation of the linear layers is offered too.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmindex.errors import ModelError, first_line
from mmindex.models.precision import autocast_dtype, check_precision, compute_label
from mmindex.models.preprocess import ImagePreprocessor, ProcessorCall, preprocessor_for
from mmindex.models.resolve import ModelRef, load_config, pick_device, quiet_transformers, resolve_model


class ClipEmbedder:
    """Embeds images (as preprocessed pixel arrays or PIL images) and texts into one vector space."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        image_processor: Any,
        ref: ModelRef,
        device: Any,
        precision: str = "auto",
        *,
        quantized: bool = False,
    ) -> None:
        import torch

        self.model = model
        self.tokenizer = tokenizer
        self.ref = ref
        self.model_id = ref.name
        self.device = device
        self.autocast = autocast_dtype(device, precision)
        self.compute = compute_label(ref.name, device, self.autocast, int8=quantized)
        self.preprocess: ImagePreprocessor | ProcessorCall = preprocessor_for(image_processor)
        config = model.config
        self.model_type = getattr(config, "model_type", "")
        text_config = getattr(config, "text_config", None)
        positions = getattr(text_config, "max_position_embeddings", None) or 77
        self.max_text_tokens = min(
            int(getattr(tokenizer, "model_max_length", positions) or positions), positions
        )
        probe = self._forward_images(torch.zeros((1, *self._input_shape()), dtype=torch.float32))
        self.dim = int(probe.shape[1])
        scale = getattr(model, "logit_scale", None)
        self.logit_scale = float(scale.exp().item()) if scale is not None else 100.0

    @classmethod
    def load(
        cls, reference: str, *, device: str = "auto", precision: str = "auto", quantize: str | None = None
    ) -> ClipEmbedder:
        """Load a model by hub id, directory or toy name. Raises ModelError with one clear line."""
        check_precision(precision, quantize)
        ref = resolve_model(reference)
        check_embedding_config(ref)
        torch_device = pick_device(device)
        model, tokenizer, image_processor = load_parts(ref)
        model.eval()
        if quantize == "int8":
            if torch_device.type != "cpu":
                raise ModelError("--quantize int8 runs on the CPU only; use --device cpu or drop it")
            precision = "fp32"
            model = quantize_int8(model)
        try:
            model.to(torch_device)
            return cls(
                model, tokenizer, image_processor, ref, torch_device, precision, quantized=quantize == "int8"
            )
        except RuntimeError as exc:
            raise ModelError(f"model {ref.name!r} cannot run on {torch_device}: {first_line(exc)}") from exc

    def _input_shape(self) -> tuple[int, int, int]:
        from PIL import Image

        side = max(self.preprocess.min_side, 8)
        return tuple(self.preprocess(Image.new("RGB", (side, side))).shape)  # type: ignore[return-value]

    def _forward_images(self, pixels: Any) -> Any:
        import torch

        with torch.inference_mode(), self._autocast():
            output = self.model.get_image_features(pixel_values=pixels.to(self.device, non_blocking=True))
            return _normalise(_pooled(output))

    def _autocast(self) -> Any:
        import contextlib

        import torch

        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """[B, 3, H, W] preprocessed pixels -> [B, dim] float32 unit vectors."""
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
        if self.device.type == "cuda":
            tensor = tensor.pin_memory()
        vectors: np.ndarray = self._forward_images(tensor).float().cpu().numpy()
        return vectors

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """PIL images (any mode) -> [B, dim] unit vectors."""
        return self.embed_pixels(np.stack([self.preprocess(image) for image in images]))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> [B, dim] float32 unit vectors (truncated to the model's context length)."""
        import torch

        inputs = text_inputs(self.tokenizer, texts, self.max_text_tokens, self.model_type, self.device)
        with torch.inference_mode(), self._autocast():
            output = self.model.get_text_features(**inputs)
            vectors: np.ndarray = _normalise(_pooled(output)).float().cpu().numpy()
            return vectors


def text_inputs(tokenizer: Any, texts: Sequence[str], max_tokens: int, model_type: str, device: Any) -> Any:
    """Token ids (and attention mask) for the text tower, on `device`; SigLIP was trained on texts
    padded to its full length, so it gets them that way."""
    padding: Any = "max_length" if model_type.startswith("siglip") else True
    tokens = tokenizer(
        list(texts), padding=padding, truncation=True, max_length=max_tokens, return_tensors="pt"
    )
    return {name: tokens[name].to(device) for name in ("input_ids", "attention_mask") if name in tokens}


def load_parts(ref: ModelRef) -> tuple[Any, Any, Any]:
    """A dual encoder's model, tokenizer and (PIL) image processor; ModelError with one line."""
    quiet_transformers()
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    try:
        model = AutoModel.from_pretrained(ref.location, local_files_only=ref.local)
        tokenizer = AutoTokenizer.from_pretrained(ref.location, local_files_only=ref.local)
        image_processor = AutoImageProcessor.from_pretrained(
            ref.location, local_files_only=ref.local, backend="pil"
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelError(f"cannot load model {ref.name!r}: {first_line(exc)}") from exc
    if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
        raise ModelError(f"{ref.name} ({type(model).__name__}) has no image and text towers to embed with")
    return model, tokenizer, image_processor


def check_embedding_config(ref: ModelRef) -> Any:
    """Refuse, before loading weights, a model that is not an image-text dual encoder."""
    config = load_config(ref)
    if getattr(config, "vision_config", None) is None or getattr(config, "text_config", None) is None:
        kind = getattr(config, "model_type", "unknown")
        raise ModelError(f"{ref.name} is a {kind!r} model, not a CLIP-style image-text embedding model")
    return config


def quantize_int8(model: Any) -> Any:
    """Dynamic int8 quantisation of every nn.Linear (CPU inference only)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def _pooled(output: Any) -> Any:
    return getattr(output, "pooler_output", output)


def _normalise(vectors: Any) -> Any:
    import torch

    vectors = vectors.float()
    return vectors / torch.linalg.vector_norm(vectors, dim=-1, keepdim=True).clamp_min(1e-12)
