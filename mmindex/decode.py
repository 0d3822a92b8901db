"""Bytes -> an upright RGB image, or a DecodeError that says why not.

Every Pillow mode ends as RGB: transparency is composited on white, 16-bit and float images are
scaled (not clipped) to 8 bits, CMYK/palette/greyscale are converted, animations give their first
frame, EXIF orientation is applied. Pillow's decompression-bomb guard stays on. JPEGs are decoded in
draft mode when a target size is known: the decoder scales by 1/2, 1/4 or 1/8 in the DCT domain,
several times cheaper than a full decode followed by a resize (parity is checked by the test suite).
"""

from __future__ import annotations

import io
import logging
import math
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmindex.errors import DecodeError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".apng",
        ".gif",
        ".webp",
        ".bmp",
        ".dib",
        ".tif",
        ".tiff",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".tga",
        ".avif",
        ".qoi",
        ".jp2",
        ".j2k",
    }
)

# Formats we let Pillow open: raster formats only. EPS (Ghostscript), WMF and friends stay out.
DECODABLE_FORMATS = (
    "JPEG",
    "PNG",
    "GIF",
    "WEBP",
    "BMP",
    "DIB",
    "TIFF",
    "PPM",
    "TGA",
    "AVIF",
    "QOI",
    "JPEG2000",
    "ICO",
    "PCX",
    "SGI",
)

_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"qoif", "QOI"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG2000"),
)
SNIFF_BYTES = 16
_EXIF_ORIENTATION = 0x0112
_TRANSPOSING_ORIENTATIONS = {5, 6, 7, 8}


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """An upright RGB image plus facts about the original file."""

    image: Image.Image
    width: int
    height: int
    format: str


def sniff_format(head: bytes) -> str | None:
    """The image format that the first bytes of a file announce, or None."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp" and head[8:12] in (b"avif", b"avis"):
        return "AVIF"
    return None


def decode(data: bytes, *, min_side: int | None = None) -> DecodedImage:
    """Decode image bytes to upright RGB.

    With `min_side`, a JPEG may be decoded at a reduced scale whose shorter side is still at least
    `min_side` pixels (width/height in the result always describe the original).
    """
    return _reading(data, lambda: _decode_opened(_open(data), data, min_side))


def inspect(data: bytes) -> DecodedImage:
    """The facts `decode` gives (upright width and height, format) from the header alone, for an
    image whose pixels another decoder (the GPU's) will read; `image` is the unloaded Pillow image.
    The decompression-bomb guard applies; a body too corrupt to decode is found by that decoder."""

    def header() -> DecodedImage:
        image = _open(data)
        width, height = image.size
        if _orientation(image)[0] in _TRANSPOSING_ORIENTATIONS:
            width, height = height, width
        return DecodedImage(image=image, width=width, height=height, format=image.format or "UNKNOWN")

    return _reading(data, header)


def _reading(data: bytes, read: Callable[[], DecodedImage]) -> DecodedImage:
    """`read()`, with Pillow's failures on bad bytes turned into DecodeErrors that say why; anything
    else propagates."""
    if not data:
        raise DecodeError("empty file")
    try:
        with warnings.catch_warnings():
            # Pillow warns between 1x and 2x MAX_IMAGE_PIXELS and refuses above 2x; the refusal stays on.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return read()
    except DecodeError:
        raise
    except UnidentifiedImageError as exc:
        raise DecodeError(f"not a readable image ({_describe_head(data)})") from exc
    except Image.DecompressionBombError as exc:
        raise DecodeError(f"refused by the decompression-bomb guard: {exc}") from exc
    except Exception as exc:
        if describes_the_file(exc):
            raise DecodeError(f"corrupt or truncated image: {type(exc).__name__}: {exc}") from exc
        raise  # not known to mean a bad file: the caller records it as retryable, with its cause


# What Pillow raises for bytes that are not a good image. ValueError, TypeError, IndexError and KeyError
# also come from malformed headers, but only count when Pillow's own code raised them.
_FILE_ERRORS = (OSError, SyntaxError, EOFError, struct.error, zlib.error)
_PLUGIN_ERRORS = (ValueError, TypeError, IndexError, KeyError)


def describes_the_file(exc: BaseException) -> bool:
    """Whether a decoding error says the bytes are bad (permanent), not that something else broke."""
    if isinstance(exc, _FILE_ERRORS):
        return True
    if not isinstance(exc, _PLUGIN_ERRORS):
        return False
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    return frame is not None and str(frame.tb_frame.f_globals.get("__name__", "")).startswith("PIL.")


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data), formats=DECODABLE_FORMATS)


def _decode_opened(image: Image.Image, data: bytes, min_side: int | None) -> DecodedImage:
    image_format = image.format or "UNKNOWN"
    width, height = image.size
    orientation, exif_readable = _orientation(image)
    if not exif_readable:
        # Reading EXIF can run the decoder (a PNG may keep EXIF after its pixels); if that failed, the
        # image is half-loaded and a second load() would not say so. Decode afresh, without EXIF.
        image = _open(data)
    if orientation in _TRANSPOSING_ORIENTATIONS:
        width, height = height, width
    if min_side and image_format == "JPEG" and min(image.size) > 2 * min_side:
        scale = min_side / min(image.size)
        image.draft("RGB", (math.ceil(image.size[0] * scale), math.ceil(image.size[1] * scale)))
    image.load()
    if orientation not in (None, 1):
        image = ImageOps.exif_transpose(image)
    return DecodedImage(image=to_rgb(image), width=width, height=height, format=image_format)


def _orientation(image: Image.Image) -> tuple[int | None, bool]:
    """(EXIF orientation or None, whether EXIF could be read). A broken EXIF block must not lose an
    image whose pixels are fine: it then stays as stored."""
    try:
        value = image.getexif().get(_EXIF_ORIENTATION)
    except Exception as exc:  # any EXIF failure means "no orientation"; the pixels decide
        log.debug("EXIF unreadable (%s: %s); decoding without it", type(exc).__name__, exc)
        return None, False
    return (value if isinstance(value, int) else None), True


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (transparency composited on white)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_rgb(image)
    return image.convert("RGB")


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16/32-bit integer and float images: scale to 0..255 instead of clipping at 255."""
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        low, high = float(np.nanmin(pixels)), float(np.nanmax(pixels))
        if high <= 1.0 and low >= 0.0:
            low, high = 0.0, 1.0
    else:
        low, high = 0.0, 65535.0 if pixels.max() > 255 else 255.0
    scaled = np.clip((pixels - low) * (255.0 / max(high - low, 1e-12)), 0, 255)
    return Image.fromarray(np.nan_to_num(scaled).round().astype(np.uint8), "L").convert("RGB")


def _describe_head(data: bytes) -> str:
    fmt = sniff_format(data[:SNIFF_BYTES])
    if fmt:
        return f"starts like {fmt} but cannot be decoded"
    if _looks_like_text(data[:512]):
        return f"{len(data)} bytes that look like text"
    return f"{len(data)} bytes of unknown content"


def _looks_like_text(sample: bytes) -> bool:
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return bool(text) and sum(ch.isprintable() or ch.isspace() for ch in text) >= 0.95 * len(text)
