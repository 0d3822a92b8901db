"""Model input arrays from RGB images, reproducing a Hugging Face image processor with PIL + numpy.

For the common processors (CLIP, BLIP, ViT, SigLIP: resize by shortest edge or to a fixed size,
optional centre crop, rescale, normalise) the arithmetic matches the transformers Pil backend
exactly, at about two thirds of its cost and without its per-call overhead. Any other processor is
called as it is (`ProcessorCall`), which is slower but always right.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

TRIM_WINDOW = 8  # crops' lengths of a panorama kept around its centre before resizing


@dataclass(frozen=True)
class ImagePreprocessor:
    """Resize (shortest edge, or exact height x width), centre crop, rescale, normalise -> float32 CHW."""

    shortest_edge: int | None
    resize_to: tuple[int, int] | None  # (height, width)
    crop: tuple[int, int] | None  # (height, width)
    resample: int
    rescale_factor: float | None
    mean: np.ndarray | None
    std: np.ndarray | None
    uint8: bool = False  # return the resized, cropped pixels as uint8; `model_input` rescales them

    def as_uint8(self) -> ImagePreprocessor:
        """This preprocessor with uint8 output: a quarter of the bytes to queue, pin and copy, and the
        rescale and normalisation done by `model_input` on the model's device, batched."""
        return dataclasses.replace(self, uint8=True)

    @property
    def min_side(self) -> int:
        """The shorter side an input needs so no detail is lost to downscaling before the resize."""
        if self.shortest_edge is not None:
            return self.shortest_edge
        assert self.resize_to is not None
        return max(self.resize_to)

    def trim_box(self, width: int, height: int) -> tuple[int, int, int, int] | None:
        """(left, top, right, bottom) of the centre window to keep of a panorama-like image (say
        100 x 1,000,000) before resizing, or None to keep it whole. Resized whole, its long side would
        reach millions of pixels (gigabytes) only for the centre crop to keep a few hundred of them;
        the window is `TRIM_WINDOW` crops long, so the final crop is unchanged up to a pixel."""
        if self.shortest_edge is None or self.crop is None:
            return None
        scale = self.shortest_edge / min(width, height)
        if max(width, height) * scale <= TRIM_WINDOW * max(self.crop):
            return None
        keep = math.ceil(TRIM_WINDOW * max(self.crop) / scale)
        if width > height:
            left = (width - keep) // 2
            return left, 0, left + keep, height
        top = (height - keep) // 2
        return 0, top, width, top + keep

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(height, width) an image of this size is resized to (the transformers processors truncate)."""
        if self.shortest_edge is None:
            assert self.resize_to is not None
            return self.resize_to
        short = self.shortest_edge
        return (
            (int(short * height / width), short) if width <= height else (short, int(short * width / height))
        )

    def __call__(self, image: Any) -> np.ndarray:
        if image.mode != "RGB":
            image = image.convert("RGB")
        if (box := self.trim_box(*image.size)) is not None:
            image = image.crop(box)
        height, width = self.resized_size(*image.size)
        size = (width, height)
        pixels = np.asarray(image.resize(size, resample=self.resample))
        if self.crop is not None:
            top, left = centre_crop_origin(pixels.shape[0], pixels.shape[1], self.crop)
            pixels = pixels[top : top + self.crop[0], left : left + self.crop[1]]
        if self.uint8:
            return np.ascontiguousarray(pixels.transpose(2, 0, 1), dtype=np.uint8)
        array = (
            pixels.astype(np.float64) * self.rescale_factor
            if self.rescale_factor
            else pixels.astype(np.float64)
        )
        result = array.astype(np.float32)
        if self.mean is not None and self.std is not None:
            result = (result - self.mean) / self.std
        return np.ascontiguousarray(result.transpose(2, 0, 1), dtype=np.float32)


def model_input(pixels: Any, preprocessor: object, device: Any, dtype: Any = None) -> Any:
    """A batch of pixels [B, 3, H, W] (numpy, or a tensor on any device) as the model's input
    tensor on `device` (in `dtype`, default fp32).

    uint8 pixels (from an `as_uint8` preprocessor) travel as bytes, through pinned memory and a
    non-blocking copy on CUDA, and are rescaled and normalised there; float pixels are used as they are.
    """
    import torch

    if isinstance(pixels, torch.Tensor):
        tensor = pixels
    else:
        tensor = torch.from_numpy(np.ascontiguousarray(pixels))
        if device.type == "cuda":
            tensor = tensor.pin_memory()
    tensor = tensor.to(device, non_blocking=True)
    if tensor.dtype == torch.uint8:
        assert isinstance(preprocessor, ImagePreprocessor)
        tensor = tensor.to(torch.float32)
        if preprocessor.rescale_factor:
            tensor = tensor * preprocessor.rescale_factor
        if preprocessor.mean is not None and preprocessor.std is not None:
            mean = torch.from_numpy(preprocessor.mean).to(device).view(1, -1, 1, 1)
            std = torch.from_numpy(preprocessor.std).to(device).view(1, -1, 1, 1)
            tensor = (tensor - mean) / std
    else:
        tensor = tensor.to(torch.float32)
    return tensor if dtype is None else tensor.to(dtype)


def centre_crop_origin(height: int, width: int, crop: tuple[int, int]) -> tuple[int, int]:
    """(top, left) of a centred `crop` (height, width) of a resized image; ValueError if it does not fit."""
    top, left = (height - crop[0]) // 2, (width - crop[1]) // 2
    if top < 0 or left < 0:
        raise ValueError(f"image resized to {width}x{height} is smaller than the crop")
    return top, left


@dataclass(frozen=True)
class ProcessorCall:
    """Fallback: run the Hugging Face image processor itself on one image."""

    processor: Any
    min_side: int

    def __call__(self, image: Any) -> np.ndarray:
        output = self.processor(images=[image], return_tensors="np")
        return np.asarray(output["pixel_values"][0], dtype=np.float32)


def preprocessor_for(processor: Any) -> ImagePreprocessor | ProcessorCall:
    """The fastest exact preprocessor for a transformers image processor."""
    size = _as_dict(getattr(processor, "size", None))
    crop = (
        _as_dict(getattr(processor, "crop_size", None))
        if getattr(processor, "do_center_crop", False)
        else None
    )
    shortest = size.get("shortest_edge")
    exact = (size.get("height"), size.get("width"))
    simple_resize = getattr(processor, "do_resize", True) and (
        (shortest is not None and set(size) <= {"shortest_edge"})
        or (None not in exact and set(size) == {"height", "width"})
    )
    crop_ok = crop is None or (crop.get("height") is not None and crop.get("width") is not None)
    extra_steps = any(
        getattr(processor, flag, False) for flag in ("do_pad", "do_reduce_labels", "do_flip_channel_order")
    )
    if not (simple_resize and crop_ok) or extra_steps:
        sides = [int(v) for v in (shortest, *exact) if v]
        return ProcessorCall(processor, max(sides) if sides else 224)
    normalise = getattr(processor, "do_normalize", True)
    rescale = getattr(processor, "do_rescale", True)
    return ImagePreprocessor(
        shortest_edge=int(shortest) if shortest is not None else None,
        resize_to=None if shortest is not None else (int(exact[0]), int(exact[1])),  # type: ignore[arg-type]
        crop=(int(crop["height"]), int(crop["width"])) if crop else None,
        resample=int(getattr(processor, "resample", Image.Resampling.BICUBIC)),
        rescale_factor=float(getattr(processor, "rescale_factor", 1 / 255)) if rescale else None,
        mean=np.asarray(processor.image_mean, dtype=np.float32) if normalise else None,
        std=np.asarray(processor.image_std, dtype=np.float32) if normalise else None,
    )


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v is not None}
    if isinstance(value, int):
        return {"shortest_edge": value}
    try:
        return {k: v for k, v in dict(value).items() if v is not None}
    except (TypeError, ValueError):
        return {k: getattr(value, k) for k in ("shortest_edge", "height", "width") if getattr(value, k, None)}
