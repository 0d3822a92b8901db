"""Text-to-image models: any diffusers text-to-image pipeline (`AutoPipelineForText2Image`), by hub id
or directory, in the optional `mmindex[generate]` extra.

Every image gets its own seeded torch generator, so each image is reproducible on its own whatever
batch it was made in. On CUDA the pipeline runs in fp16 (bf16 with `--precision bf16`); on CPU in
fp32 unless bf16 is asked for.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmindex.config import DEFAULT_GENERATOR
from mmindex.errors import ConfigError, ModelError, first_line

# steps and guidance a model's card prescribes, where the pipeline class's own defaults (50 steps,
# guidance 7.5) would be wrong: the distilled turbo models make an image in one step, unguided
RECOMMENDED: dict[str, tuple[int, float]] = {
    "stabilityai/sd-turbo": (1, 0.0),
    "stabilityai/sdxl-turbo": (1, 0.0),
}


@dataclass(frozen=True)
class ImageSettings:
    """How images are made: steps and guidance (None: the pipeline's defaults), size in pixels."""

    steps: int | None = None
    guidance: float | None = None
    width: int = 512
    height: int = 512

    def validate(self) -> None:
        if self.width % 8 or self.height % 8 or min(self.width, self.height) < 8:
            raise ConfigError(
                f"--size {self.width}x{self.height}: both sides must be multiples of 8, at least 8"
            )
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"--steps must be at least 1, got {self.steps}")


def parse_size(text: str) -> tuple[int, int]:
    """`WxH` -> (width, height); ConfigError with the expected form otherwise."""
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise ConfigError(f"--size {text!r}: write it as WIDTHxHEIGHT, e.g. 512x512")
    return int(width), int(height)


def import_diffusers() -> Any:
    try:
        import diffusers
    except ImportError as exc:
        raise ConfigError('generating images needs diffusers: pip install "mmindex[generate]"') from exc
    return diffusers


def check_generator(name: str) -> str:
    """The pipeline class a model declares; ModelError (exit 2) when it is not a text-to-image one."""
    from mmindex.toy.generator import is_toy_generator

    path = toy_path(name)
    if path.is_dir() and is_toy_generator(path):
        return "ToyTextToImage"
    diffusers = import_diffusers()
    try:
        if path.is_dir():
            index_file = path / "model_index.json"
            if not index_file.is_file():
                raise ModelError(f"{path} is not a diffusers pipeline: it has no model_index.json")
        else:
            from huggingface_hub import hf_hub_download

            index_file = Path(hf_hub_download(name, "model_index.json"))
        declared = json.loads(index_file.read_text()).get("_class_name", "")
    except ModelError:
        raise
    except Exception as exc:  # hub errors, offline mode, broken JSON: one line, exit 2
        raise ModelError(f"cannot load text-to-image model {name!r}: {first_line(exc)}") from exc
    known = {
        cls.__name__
        for mapping in (diffusers.pipelines.auto_pipeline.AUTO_TEXT2IMAGE_PIPELINES_MAPPING,)
        for cls in mapping.values()
    }
    if declared not in known:
        raise ModelError(
            f"{name} is a {declared or 'model without a pipeline class'}, not a text-to-image pipeline "
            f"({', '.join(sorted(known)[:4])}, ...)"
        )
    return str(declared)


class TextToImage:
    """A loaded text-to-image pipeline."""

    def __init__(self, pipeline: Any, name: str, device: Any, compute: str) -> None:
        self.pipeline, self.model_id, self.device, self.compute = pipeline, name, device, compute

    @classmethod
    def load(cls, name: str, *, device: str = "auto", precision: str = "auto") -> TextToImage:
        import torch

        from mmindex.models.resolve import pick_device

        check_generator(name)
        diffusers = import_diffusers()
        target = pick_device(device)
        dtype = torch.float32
        if precision == "bf16" or (precision == "auto" and target.type == "cuda"):
            dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        elif precision == "fp16":
            dtype = torch.float16
        path = Path(name).expanduser()
        location = str(path.resolve()) if path.is_dir() else name
        try:
            with warnings.catch_warnings():  # newer diffusers call it `dtype`; older ones know only this
                warnings.filterwarnings("ignore", message=".*torch_dtype", category=FutureWarning)
                pipeline = diffusers.AutoPipelineForText2Image.from_pretrained(location, torch_dtype=dtype)
        except Exception as exc:  # a broken or incompatible checkpoint: one line, exit 2
            raise ModelError(f"cannot load text-to-image model {name!r}: {first_line(exc)}") from exc
        pipeline = pipeline.to(target)
        pipeline.set_progress_bar_config(disable=True)
        label = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
        return cls(pipeline, location, target, f"{name} on {target.type} in {label}")

    def generate(self, prompts: list[str], seeds: list[int], settings: ImageSettings) -> list[Any]:
        """One PIL image per prompt, each from its own seed."""
        import torch

        recommended = RECOMMENDED.get(self.model_id)
        if recommended is not None:
            steps, guidance = recommended
            settings = ImageSettings(
                settings.steps or steps,
                guidance if settings.guidance is None else settings.guidance,
                settings.width,
                settings.height,
            )
        generators = [torch.Generator(self.device).manual_seed(seed) for seed in seeds]
        options: dict[str, Any] = {"height": settings.height, "width": settings.width}
        if settings.steps is not None:
            options["num_inference_steps"] = settings.steps
        if settings.guidance is not None:
            options["guidance_scale"] = settings.guidance
        with torch.inference_mode():
            output = self.pipeline(prompt=prompts, generator=generators, output_type="pil", **options)
        return list(output.images)

    def defaults(self, settings: ImageSettings) -> ImageSettings:
        """The settings with the pipeline's own defaults filled in (what provenance records)."""
        import inspect

        parameters = inspect.signature(self.pipeline.__call__).parameters
        recommended = RECOMMENDED.get(self.model_id)
        steps = settings.steps or (
            recommended[0] if recommended else parameters["num_inference_steps"].default
        )
        guidance = settings.guidance
        if guidance is None and recommended:
            guidance = recommended[1]
        if guidance is None and "guidance_scale" in parameters:
            guidance = parameters["guidance_scale"].default
        return ImageSettings(
            int(steps), None if guidance is None else float(guidance), settings.width, settings.height
        )


def load_generator(name: str, *, device: str = "auto", precision: str = "auto") -> Any:
    """A text-to-image model by resolved name: the toy generator, or a diffusers pipeline."""
    from mmindex.toy.generator import ToyTextToImage, is_toy_generator

    path = toy_path(name)
    if path.is_dir() and is_toy_generator(path):
        return ToyTextToImage(path, name)
    return TextToImage.load(name, device=device, precision=precision)


def toy_path(name: str) -> Path:
    """Where a toy model name (or any directory) lives."""
    from mmindex.toy import TOY_MODELS

    return TOY_MODELS.get(name, Path(name).expanduser())


def resolve_generator(name: str | None) -> str:
    """The generator a job names: a toy name, a directory (made absolute) or a hub id."""
    from mmindex.toy import TOY_MODELS

    name = (name or DEFAULT_GENERATOR).strip()
    if name in TOY_MODELS:
        return name
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name
