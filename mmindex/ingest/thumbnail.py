"""Small encoded previews of indexed images, made from the decode a run already does.

A thumbnail keeps the image's aspect ratio with its long side at most `size` pixels (never upscaled),
and is stored in the table so results can be shown without access to the original storage. Downscaling
is an integer box reduction to within 2x of the target, then one bilinear step: as sharp as a bicubic
resize at this size and several times cheaper.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mmindex.config import THUMBNAIL_FORMAT, THUMBNAIL_QUALITY, THUMBNAIL_SIZE
from mmindex.errors import ConfigError

THUMBNAIL_ROLE = "thumbnail"  # the preprocessor role whose output is the encoded thumbnail
THUMBNAIL_FORMATS = {"webp": "WEBP", "jpeg": "JPEG", "jpg": "JPEG"}
MIME_TYPES = {"WEBP": "image/webp", "JPEG": "image/jpeg"}


@dataclass(frozen=True)
class Thumbnailer:
    """Image -> encoded thumbnail bytes (as a uint8 array, so it travels with the model inputs)."""

    size: int = THUMBNAIL_SIZE
    format: str = THUMBNAIL_FORMAT
    quality: int = THUMBNAIL_QUALITY
    draft_side: int = 0  # what the decode may scale a JPEG down to (0: the models decide)

    def __post_init__(self) -> None:
        if not 16 <= self.size <= 2048:
            raise ConfigError(f"thumbnail size must be between 16 and 2048 pixels, got {self.size}")
        if self.format.lower() not in THUMBNAIL_FORMATS:
            raise ConfigError(f"thumbnail format {self.format!r} is not one of: webp, jpeg")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"thumbnail quality must be between 1 and 100, got {self.quality}")

    @property
    def pil_format(self) -> str:
        return THUMBNAIL_FORMATS[self.format.lower()]

    @property
    def min_side(self) -> int:
        # By default asks nothing of the decode, so embeddings never depend on thumbnails: a JPEG decoded
        # at reduced scale for the model (short side still >= the model's, e.g. 224) may give a square
        # image a thumbnail a little under `size`. A backfill, with no model, sets draft_side = size.
        return self.draft_side

    def __call__(self, image: object) -> np.ndarray:
        assert isinstance(image, Image.Image)
        return np.frombuffer(self.encode(image), dtype=np.uint8)

    def encode(self, image: Image.Image) -> bytes:
        small = shrink(image, self.size)
        buffer = io.BytesIO()
        if self.pil_format == "WEBP":
            small.save(buffer, "WEBP", quality=self.quality, method=0)
        else:
            small.save(buffer, "JPEG", quality=self.quality)
        return buffer.getvalue()


def shrink(image: Image.Image, size: int) -> Image.Image:
    """The image scaled so its long side is at most `size`, aspect ratio kept."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    long_side = max(width, height)
    if long_side <= size:
        return image
    factor = long_side // (2 * size)
    if factor >= 2:
        image = image.reduce(factor)
    scale = size / long_side
    target = (max(1, math.floor(width * scale + 0.5)), max(1, math.floor(height * scale + 0.5)))
    return image.resize(target, Image.Resampling.BILINEAR)
