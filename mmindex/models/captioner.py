"""Caption generation with Hugging Face image-to-text models: BLIP, GIT and VisionEncoderDecoder.

transformers 5 has no `pipeline("image-to-text")`, so each family's `generate` call is made here:
BLIP takes an optional prompt as `input_ids` starting with [CLS] (generate swaps in its bos), GIT as
`[CLS] + prompt` input_ids, VisionEncoderDecoder as `decoder_input_ids` after its start token. A
prompt prefix conditions the caption and is stripped from it. Batched on the embedder's device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from mmindex.captions import clean_caption
from mmindex.config import MAX_NEW_TOKENS, NUM_BEAMS
from mmindex.errors import ModelError, first_line
from mmindex.models.execution import Mode, apply_mode, choose_mode
from mmindex.models.precision import check_precision
from mmindex.models.preprocess import ImagePreprocessor, ProcessorCall, preprocessor_for
from mmindex.models.resolve import ModelRef, load_config, pick_device, quiet_transformers, resolve_model

CAPTION_FAMILIES = ("blip", "git", "vision-encoder-decoder")


@dataclass(frozen=True)
class GenerationSettings:
    """How captions are generated. `prompt` is a prefix such as "a photograph of" (BLIP's conditional
    captioning); it steers the caption and is not part of the stored text."""

    max_new_tokens: int = MAX_NEW_TOKENS
    num_beams: int = NUM_BEAMS
    prompt: str | None = None

    def validate(self) -> None:
        if self.max_new_tokens < 1 or self.num_beams < 1:
            raise ModelError("--max-new-tokens and --num-beams must be at least 1")


class Captioner:
    """Generates captions for batches of preprocessed pixels (or PIL images)."""

    def __init__(
        self,
        model: Any,
        image_processor: Any,
        tokenizer: Any,
        ref: ModelRef,
        device: Any,
        precision: str = "auto",
        settings: GenerationSettings | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.ref = ref
        self.model_id = ref.name
        self.device = device
        self.settings = settings or GenerationSettings()
        self.family = model.config.model_type
        self.preprocess: ImagePreprocessor | ProcessorCall = preprocessor_for(image_processor)
        self.mode = self._choose_mode(model, precision)
        self.model = apply_mode(model, self.mode)
        self.autocast = self.mode.autocast_dtype()
        self.compute = f"{ref.name} on {device} in {self.mode.name}"
        if device.type == "cpu":
            _one_image_at_a_time(_vision_tower(model, self.family))

    def _choose_mode(self, model: Any, precision: str) -> Mode:
        """As for the embedder (mmindex.models.execution), judged on the vision tower's output for
        fixed noise images: what the decoder attends to."""
        import torch

        side = max(self.preprocess.min_side, 8)
        shape = self.preprocess(Image.new("RGB", (side, side))).shape
        pixels = torch.from_numpy(np.random.default_rng(0).standard_normal((2, *shape), dtype=np.float32))

        def vision(candidate: Any, mode: Mode) -> Any:
            tower = _vision_tower(candidate, self.family)
            with mode.autocast_context(self.device):
                output = tower(pixel_values=pixels.to(self.device, mode.weights_dtype()))
            hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
            return hidden.flatten(1)

        return choose_mode(model, self.device, precision, [vision])

    @classmethod
    def load(
        cls,
        reference: str,
        *,
        device: str = "auto",
        precision: str = "auto",
        settings: GenerationSettings | None = None,
    ) -> Captioner:
        """Load a captioning model by hub id or directory; ModelError (one line) if it is not one or
        cannot run on the device. A one-token caption of a blank image proves it runs."""
        check_precision(precision, None)
        settings = settings or GenerationSettings()
        settings.validate()
        ref = resolve_model(reference)
        check_caption_config(ref)
        torch_device = pick_device(device)
        quiet_transformers()
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

        try:
            model = AutoModelForImageTextToText.from_pretrained(ref.location, local_files_only=ref.local)
            processor = AutoProcessor.from_pretrained(ref.location, local_files_only=ref.local)
            if hasattr(processor, "image_processor") and hasattr(processor, "tokenizer"):
                image_processor, tokenizer = processor.image_processor, processor.tokenizer
            else:  # VisionEncoderDecoder checkpoints have no processor class: load the two halves
                image_processor = AutoImageProcessor.from_pretrained(ref.location, local_files_only=ref.local)
                tokenizer = AutoTokenizer.from_pretrained(ref.location, local_files_only=ref.local)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"cannot load captioning model {ref.name!r}: {first_line(exc)}") from exc
        try:
            model.eval().to(torch_device)
            captioner = cls(model, image_processor, tokenizer, ref, torch_device, precision, settings)
            captioner._generate_ids(captioner._blank(), max_new_tokens=1)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ModelError(
                f"captioning model {ref.name!r} cannot run on {torch_device}: {first_line(exc)}"
            ) from exc
        return captioner

    def caption_pixels(self, pixels: np.ndarray) -> list[str | None]:
        """[B, 3, H, W] preprocessed pixels -> one caption per image (None if the model said nothing)."""
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))
        ids, prompt_length = self._generate_ids(tensor, max_new_tokens=self.settings.max_new_tokens)
        texts = self.tokenizer.batch_decode(ids[:, prompt_length:], skip_special_tokens=True)
        return [clean_caption(text) for text in texts]

    def caption_images(self, images: Sequence[Any]) -> list[str | None]:
        return self.caption_pixels(np.stack([self.preprocess(image) for image in images]))

    def _blank(self) -> Any:
        import torch
        from PIL import Image

        side = max(self.preprocess.min_side, 8)
        return torch.from_numpy(self.preprocess(Image.new("RGB", (side, side), (128, 128, 128)))[None])

    def _generate_ids(self, pixels: Any, *, max_new_tokens: int) -> tuple[Any, int]:
        import torch

        prompt = self._prompt_inputs(pixels.shape[0])
        prompt_length = _prompt_length(self.family, prompt)
        with torch.inference_mode(), self.mode.autocast_context(self.device):
            ids = self.model.generate(
                pixel_values=pixels.to(self.device, self.mode.weights_dtype()),
                max_new_tokens=max_new_tokens,
                min_new_tokens=1,  # start = eos checkpoints may otherwise stop at once and say ""
                num_beams=self.settings.num_beams,
                **{name: value.to(self.device) for name, value in prompt.items()},
            )
        return ids.cpu(), prompt_length

    def _prompt_inputs(self, count: int) -> dict[str, Any]:
        import torch

        prompt = self.settings.prompt
        if not prompt:
            return {}
        if self.family == "blip":  # [CLS] prompt [SEP]: generate() puts bos in column 0 and drops the [SEP]
            ids = self.tokenizer(prompt).input_ids
            return {"input_ids": torch.tensor([ids] * count)}
        words = self.tokenizer(prompt, add_special_tokens=False).input_ids
        if self.family == "git":
            return {"input_ids": torch.tensor([[self.tokenizer.cls_token_id, *words]] * count)}
        start = self.model.generation_config.decoder_start_token_id
        return {"decoder_input_ids": torch.tensor([[start, *words]] * count)}


def _vision_tower(model: Any, family: str) -> Any:
    if family == "blip":
        return model.vision_model
    if family == "git":
        return model.git.image_encoder
    return model.encoder


def _one_image_at_a_time(tower: Any) -> None:
    """On a CPU, run the vision tower image by image inside a batched generate call.

    Captioning towers see hundreds of patches (577 for BLIP at 384 px) through eager attention, so a
    batch's attention maps fall out of cache and each image costs more batched than alone (measured on
    BLIP-base: 0.89 s vs 0.60-0.71 s an image). The text decoder, which does gain from batching, still
    runs on the whole batch.
    """
    import torch
    from transformers.utils.generic import ModelOutput

    forward = tower.forward

    def per_image(pixel_values: Any = None, *args: Any, **kwargs: Any) -> Any:
        if args or pixel_values is None or pixel_values.shape[0] <= 1:
            return forward(pixel_values, *args, **kwargs)
        parts = [forward(pixel_values[i : i + 1], **kwargs) for i in range(pixel_values.shape[0])]
        if not isinstance(parts[0], ModelOutput):
            return forward(pixel_values, **kwargs)
        merged = {
            key: torch.cat([part[key] for part in parts])
            for key, value in parts[0].items()
            if torch.is_tensor(value)
        }
        return type(parts[0])(**merged)

    tower.forward = per_image


def _prompt_length(family: str, prompt: dict[str, Any]) -> int:
    """How many leading output ids are the prompt (not the caption)."""
    if not prompt:
        return 0
    ids = next(iter(prompt.values()))
    return int(ids.shape[1]) - 1 if family == "blip" else int(ids.shape[1])


def check_caption_config(ref: ModelRef) -> Any:
    """Refuse, before loading weights, a model that is not a supported image-captioning model."""
    config = load_config(ref)
    kind = getattr(config, "model_type", "unknown")
    if kind not in CAPTION_FAMILIES:
        raise ModelError(
            f"{ref.name} is a {kind!r} model, not an image-captioning model ({', '.join(CAPTION_FAMILIES)})"
        )
    return config
