"""Model inputs from encoded images on the model's device: batched GPU JPEG decoding and resizing.

At thousands of images per second the CPU's JPEG decoding is the limit, so on CUDA nvImageCodec
(`pip install "mmindex[gpu]"`) decodes a whole batch on the GPU and torch resizes, crops and casts
it there. Every image it cannot take (no CUDA, no nvImageCodec, another format, a decode error) is
decoded by the CPU path (`mmindex.decode`: Pillow, draft mode, EXIF orientation) and goes
through the same torch resize, so one batch may mix both. The resize is torch's antialiased bicubic,
which differs from Pillow's by a fraction of a grey level on average (embeddings agree within cosine
0.99; see the tests).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from mmindex.decode import decode
from mmindex.errors import DecodeError
from mmindex.models.preprocess import ImagePreprocessor, centre_crop_origin

JPEG_MAGIC = b"\xff\xd8\xff"


@functools.cache
def nvimgcodec_decoder(device_index: int = 0) -> Any | None:
    """nvImageCodec's batch decoder on a CUDA device, or None where it cannot run."""
    try:
        import torch
        from nvidia import nvimgcodec  # type: ignore[import-not-found]
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    try:
        return nvimgcodec.Decoder(device_id=device_index)
    except Exception:  # a driver or library mismatch: the CPU path still works
        return None


class DeviceDecoder:
    """Encoded images -> [B, 3, H, W] uint8 model inputs on `device` (normalise with `model_input`)."""

    def __init__(self, preprocessor: ImagePreprocessor, device: Any) -> None:
        self.preprocessor = preprocessor
        self.device = device
        self.gpu = nvimgcodec_decoder(device.index or 0) if device.type == "cuda" else None

    def __call__(self, blobs: Sequence[bytes]) -> tuple[Any, list[int]]:
        """The batch of model inputs and the positions of the blobs that could not be decoded."""
        import torch

        images: list[Any | None] = [None] * len(blobs)
        if self.gpu is not None:
            jpegs = [i for i, blob in enumerate(blobs) if blob[:3] == JPEG_MAGIC]
            for i, image in zip(jpegs, self._decode_on_gpu([blobs[i] for i in jpegs]), strict=True):
                if image is not None:
                    images[i] = torch.as_tensor(image, device=self.device).permute(2, 0, 1)
        failed: list[int] = []
        for i, blob in enumerate(blobs):
            if images[i] is None:
                images[i] = self._on_cpu(blob)
                if images[i] is None:
                    failed.append(i)
        crops = [resize_and_crop(image, self.preprocessor) for image in images if image is not None]
        if not crops:
            height, width = self.preprocessor.crop or self.preprocessor.resize_to or (1, 1)
            return torch.zeros((0, 3, height, width), dtype=torch.uint8, device=self.device), failed
        return torch.stack(crops), failed

    def _decode_on_gpu(self, jpegs: list[bytes]) -> list[Any | None]:
        """One batch call; nvImageCodec leaves the images it failed on out of its answer (some
        versions) or gives None (others), so a short answer is redone one image at a time."""
        if not jpegs:
            return []
        assert self.gpu is not None
        try:
            decoded = list(self.gpu.decode(jpegs))
            if len(decoded) == len(jpegs):
                return decoded
            return [self.gpu.decode(blob) for blob in jpegs]
        except Exception:  # the CPU path decodes what the GPU could not, and says why it cannot
            return [None] * len(jpegs)

    def _on_cpu(self, blob: bytes) -> Any | None:
        import torch

        try:
            image = decode(blob, min_side=self.preprocessor.min_side).image
        except DecodeError:
            return None
        pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
        if self.device.type == "cuda":
            pixels = pixels.pin_memory()
        return pixels.to(self.device, non_blocking=True)


def resize_and_crop(image: Any, preprocessor: ImagePreprocessor) -> Any:
    """One [3, H, W] uint8 image resized (shortest edge, or exactly) and centre-cropped as
    `preprocessor` does with Pillow, on the image's device; uint8 out."""
    import torch

    _, height, width = image.shape
    if (box := preprocessor.trim_box(width, height)) is not None:
        left, top, right, bottom = box
        image = image[:, top:bottom, left:right]
    size = preprocessor.resized_size(image.shape[2], image.shape[1])
    resized = torch.nn.functional.interpolate(
        image[None].float(), size=size, mode="bicubic", antialias=True, align_corners=False
    )[0]
    if preprocessor.crop is not None:
        top, left = centre_crop_origin(resized.shape[1], resized.shape[2], preprocessor.crop)
        resized = resized[:, top : top + preprocessor.crop[0], left : left + preprocessor.crop[1]]
    return resized.round_().clamp_(0, 255).to(torch.uint8)
