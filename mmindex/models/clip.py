"""CLIP-style image and text embeddings through transformers: batched, device-aware, L2-normalised.

Any dual-encoder checkpoint whose model exposes `get_image_features` and `get_text_features` works
(CLIP and its relatives: SigLIP, Chinese-CLIP, AltCLIP, MetaCLIP). With `precision="auto"` the
number format is chosen at load (mmindex.models.execution): half-precision weights on CUDA, bf16
weights on a CPU with native bf16, fp32 elsewhere (each only where it stays right); on CPU, int8
dynamic quantisation of the linear layers is offered too. Pixels travel as uint8 and are rescaled
and normalised on the model's device.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmindex.errors import ModelError, first_line
from mmindex.models.compiled import compile_forward, describe_failure
from mmindex.models.execution import FP32, PROBE_IMAGES, Mode, apply_mode, choose_mode
from mmindex.models.precision import check_precision
from mmindex.models.preprocess import ImagePreprocessor, ProcessorCall, model_input, preprocessor_for
from mmindex.models.resolve import ModelRef, load_config, pick_device, quiet_transformers, resolve_model

log = logging.getLogger(__name__)

PROBE_TEXTS = ("a photo of a dog", "two red bicycles leaning on a brick wall at night")


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
        mode: Mode | None = None,
    ) -> None:
        """`mode` fixes how the model runs (and leaves its weights alone, as training needs); without
        it the mode is chosen for `precision` on `device` (mmindex.models.execution) and applied."""

        self.tokenizer = tokenizer
        self.ref = ref
        self.model_id = ref.name
        self.device = device
        preprocess = preprocessor_for(image_processor)
        self.preprocess: ImagePreprocessor | ProcessorCall = (
            preprocess.as_uint8() if isinstance(preprocess, ImagePreprocessor) else preprocess
        )
        self.model_type = getattr(model.config, "model_type", "")
        self.max_text_tokens = text_context(model.config, tokenizer)
        self.model = model
        self._compiled: tuple[int, Any] | None = None  # (batch size, compiled image forward)
        self.compile_lost: str | None = None  # why a compiled pass failed and was dropped, if it did
        self._text_model: Any = None  # an int8 text-tower copy answering text queries, once chosen
        self.quantized = quantized
        if mode is None:
            mode = FP32 if quantized else self._choose_mode(precision)
            self.model = apply_mode(model, mode)
        self.mode = mode
        self.autocast = mode.autocast_dtype()
        self.device_decoder = device_decoder_for(self.preprocess, device)
        # what the table records of each row it embeds (mmindex.schema: embed_mode)
        self.embed_mode = f"{'int8' if quantized else mode.name} on {device.type}"
        self.compute = f"{ref.name} on {device} in {'int8' if quantized else mode.name}"
        self.text_compute = self.compute
        probe = self._forward_images(self._probe_pixels(1))
        self.dim = int(probe.shape[1])
        scale = getattr(model, "logit_scale", None)
        self.logit_scale = float(scale.float().exp().item()) if scale is not None else 100.0

    def _choose_mode(self, precision: str) -> Mode:

        pixels = self._probe_pixels(PROBE_IMAGES)
        texts = PROBE_TEXTS

        def images(model: Any, mode: Mode) -> Any:
            return self._forward_images(pixels, model=model, mode=mode)

        def captions(model: Any, mode: Mode) -> Any:
            return self._forward_texts(texts, model=model, mode=mode)

        return choose_mode(self.model, self.device, precision, [images, captions])

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

    def _probe_pixels(self, count: int) -> np.ndarray:
        """Fixed noise images in the form `preprocess` gives (uint8, or float for a processor call)."""
        rng = np.random.default_rng(0)
        shape = (count, *self._input_shape)
        if isinstance(self.preprocess, ImagePreprocessor):
            return rng.integers(0, 256, shape, dtype=np.uint8)
        return rng.standard_normal(shape, dtype=np.float32)

    @functools.cached_property
    def _input_shape(self) -> tuple[int, int, int]:
        from PIL import Image

        side = max(self.preprocess.min_side, 8)
        return tuple(self.preprocess(Image.new("RGB", (side, side))).shape)  # type: ignore[return-value]

    def _forward_images(self, pixels: Any, *, model: Any = None, mode: Mode | None = None) -> Any:
        import torch

        model, mode = self.model if model is None else model, mode or self.mode
        tensor = model_input(pixels, self.preprocess, self.device, mode.weights_dtype())
        with torch.inference_mode():
            output = None
            if self._compiled is not None and model is self.model and tensor.shape[0] == self._compiled[0]:
                try:
                    output = self._compiled[1](tensor)
                except Exception as exc:  # a compiled pass that breaks mid-run (a failed recompile)
                    self._compiled = None
                    self.compile_lost = describe_failure(exc)
                    log.warning("the compiled image tower failed; running eagerly: %s", self.compile_lost)
            if output is None:
                with mode.autocast_context(self.device):
                    output = model.get_image_features(pixel_values=tensor)
            return unit_vectors(pooled_output(output))

    def compile(self, batch_size: int, *, max_drift: float | None = None) -> str | None:
        """Compile the image tower for batches of `batch_size` (mmindex.models.compiled decides when);
        None once it runs, else why it does not (the eager pass stays). With `max_drift`, a compiled
        pass whose embeddings differ from the eager pass's by more than that is refused too."""
        import torch

        model, mode, device = self.model, self.mode, self.device

        def forward(pixels: Any) -> Any:
            with mode.autocast_context(device):
                return model.get_image_features(pixel_values=pixels)

        probe = model_input(self._probe_pixels(batch_size), self.preprocess, device, mode.weights_dtype())
        try:  # torch.compile itself refuses some setups (an unsupported Python), or compiling fails
            compiled = compile_forward(forward)
            with torch.inference_mode():
                compiled_vectors = unit_vectors(pooled_output(compiled(probe)))  # compiles now, not mid-batch
        except Exception as exc:  # any compiler failure (no C++ compiler, an unsupported op) means eager
            return f"torch.compile failed: {describe_failure(exc)}"
        if max_drift is not None:
            drift = float((compiled_vectors - self._forward_images(probe)).abs().max())
            if drift > max_drift:
                return (
                    f"compiled embeddings differ from eager ones by up to {drift:.1e} in {mode.name} (over "
                    f"{max_drift:.0e}), and a table's vectors must not depend on whether a run compiled"
                )
        self._compiled = (batch_size, compiled)
        return None

    def uncompile(self) -> None:
        self._compiled = None

    def _forward_texts(self, texts: Sequence[str], *, model: Any = None, mode: Mode | None = None) -> Any:
        import torch

        if model is None:
            model = self.model if self._text_model is None else self._text_model
        mode = mode or self.mode
        inputs = text_inputs(self.tokenizer, texts, self.max_text_tokens, self.model_type, self.device)
        with torch.inference_mode(), mode.autocast_context(self.device):
            return unit_vectors(pooled_output(model.get_text_features(**inputs)))

    def speed_up_text_queries(self, texts: Sequence[str] = ()) -> str:
        """For a process that answers many text queries: on a CPU in fp32, answer them with an int8
        copy of the text tower where it stays right on `texts` (say, the table's captions) and the
        probe texts, and is faster (mmindex.models.text_int8). Returns what text queries run in."""
        from mmindex.models.text_int8 import int8_text_copy, int8_text_verdict

        if self.device.type != "cpu" or self.quantized or self.mode != FP32 or self._text_model is not None:
            return self.text_compute
        probes = list(dict.fromkeys([*PROBE_TEXTS, *(text for text in texts if text and text.strip())]))

        def forward(model: Any, batch: Sequence[str]) -> Any:
            return self._forward_texts(batch, model=model, mode=FP32)

        try:
            candidate = int8_text_copy(self.model)
            if candidate is None:
                return self.text_compute
            chosen, why = int8_text_verdict(forward, self.model, candidate, probes)
        except Exception as exc:  # a model int8 cannot copy or run: text queries stay as they were
            chosen, why = False, f"no int8 text tower: {describe_failure(exc)}"
        if chosen:
            self._text_model = candidate
            self.text_compute = f"{self.ref.name} on {self.device}, text queries in int8 ({why})"
        else:
            self.text_compute = f"{self.compute} ({why})"
        return self.text_compute

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """[B, 3, H, W] pixels (uint8 from `preprocess`, or float32 already normalised) -> [B, dim]
        float32 unit vectors."""
        vectors: np.ndarray = self._forward_images(pixels).cpu().numpy()
        return vectors

    def embed_encoded(self, inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, list[int]]:
        """A batch mixing encoded JPEGs (1-D uint8, decoded here by `device_decoder`, on the GPU
        where it can) and preprocessed uint8 pixels -> (vectors of those that decoded, in order;
        the positions of those that did not)."""
        import torch

        from mmindex.models.device_decode import DeviceDecoder

        decoder = self.device_decoder or DeviceDecoder(self.preprocess, self.device)  # type: ignore[arg-type]
        encoded = [i for i, array in enumerate(inputs) if array.ndim == 1]
        decoded, failed_encoded = decoder([inputs[i].tobytes() for i in encoded])
        failed = [encoded[i] for i in failed_encoded]
        undecoded = set(failed)
        decoded_in_order = iter(decoded)
        batch = [
            next(decoded_in_order) if array.ndim == 1 else torch.from_numpy(array).to(self.device)
            for i, array in enumerate(inputs)
            if i not in undecoded
        ]
        if not batch:
            return np.zeros((0, self.dim), np.float32), failed
        vectors: np.ndarray = self._forward_images(torch.stack(batch)).cpu().numpy()
        return vectors, failed

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """PIL images (any mode) -> [B, dim] unit vectors."""
        return self.embed_pixels(np.stack([self.preprocess(image) for image in images]))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> [B, dim] float32 unit vectors (truncated to the model's context length)."""
        vectors: np.ndarray = self._forward_texts(texts).cpu().numpy()
        return vectors


def device_decoder_for(preprocess: Any, device: Any) -> Any | None:
    """A batch JPEG decoder on `device` for the pipeline's encoded inputs, where one runs there
    (CUDA with nvImageCodec; `MMINDEX_GPU_DECODE=0` turns it off); None: decode on the CPU."""
    import os

    if device.type != "cuda" or not isinstance(preprocess, ImagePreprocessor):
        return None
    if os.environ.get("MMINDEX_GPU_DECODE", "1").lower() in ("0", "off", "false", "no"):
        return None
    from mmindex.models.device_decode import DeviceDecoder, nvimgcodec_decoder

    if nvimgcodec_decoder(device.index or 0) is None:
        return None
    return DeviceDecoder(preprocess, device)


def text_inputs(tokenizer: Any, texts: Sequence[str], max_tokens: int, model_type: str, device: Any) -> Any:
    """Token ids (and attention mask) for the text tower, on `device`; SigLIP was trained on texts
    padded to its full length, so it gets them that way."""
    padding: Any = "max_length" if model_type.startswith("siglip") else True
    tokens = tokenizer(
        list(texts), padding=padding, truncation=True, max_length=max_tokens, return_tensors="pt"
    )
    return {name: tokens[name].to(device) for name in ("input_ids", "attention_mask") if name in tokens}


def text_context(config: Any, tokenizer: Any) -> int:
    """The most tokens the text tower reads."""
    positions = getattr(getattr(config, "text_config", None), "max_position_embeddings", None) or 77
    return min(int(getattr(tokenizer, "model_max_length", positions) or positions), positions)


def load_parts(ref: ModelRef, *, images: bool = True) -> tuple[Any, Any, Any]:
    """A dual encoder's model, tokenizer and (PIL) image processor (None without `images`: its
    import alone takes over a second); ModelError with one line."""
    quiet_transformers()
    from transformers import AutoModel, AutoTokenizer

    try:
        model = AutoModel.from_pretrained(ref.location, local_files_only=ref.local)
        tokenizer = AutoTokenizer.from_pretrained(ref.location, local_files_only=ref.local)
        image_processor = None
        if images:
            from transformers import AutoImageProcessor

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


def pooled_output(output: Any) -> Any:
    return getattr(output, "pooler_output", output)


def unit_vectors(vectors: Any) -> Any:
    import torch

    vectors = vectors.float()
    return vectors / torch.linalg.vector_norm(vectors, dim=-1, keepdim=True).clamp_min(1e-12)
