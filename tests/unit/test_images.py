"""Decoding every kind of image file a real corpus holds, and refusing the ones that are not images."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mmindex.decode import decode, sniff_format
from mmindex.errors import DecodeError


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def test_exif_orientation_is_applied_and_size_is_the_upright_one() -> None:
    # A 40x20 image whose left half is red, stored with orientation 6 (rotate 90° clockwise to view).
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.fromarray(pixels), "JPEG", exif=exif, quality=95)

    decoded = decode(data)

    assert (decoded.width, decoded.height) == (20, 40)
    assert decoded.image.size == (20, 40)
    top = np.asarray(decoded.image)[:10].mean(axis=(0, 1))
    assert top[0] > 200 and top[1] < 60  # the red half is on top once upright


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG")
    decoded = decode(data)
    assert decoded.image.mode == "RGB"
    red, green, blue = np.asarray(decoded.image).reshape(-1, 3).mean(axis=0)
    assert red > 200 and green < 60 and blue < 60


def test_sixteen_bit_png_is_scaled_not_clipped() -> None:
    gradient = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    data = encode(Image.fromarray(gradient), "PNG")
    decoded = np.asarray(decode(data).image)[:, :, 0].astype(int)
    assert decoded.min() <= 2 and decoded.max() >= 253
    assert 100 < decoded.mean() < 155  # clipping at 255 would give a mean near 255


def test_palette_with_transparency_is_composited_on_white() -> None:
    image = Image.new("P", (10, 10), 0)
    image.putpalette([0, 0, 0] * 256)
    image.info["transparency"] = 0
    data = encode(image, "PNG", transparency=0)
    assert np.asarray(decode(data).image).min() == 255


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_white(mode: str) -> None:
    image = Image.new(mode, (8, 8), (0, 0) if mode == "LA" else (0, 0, 0, 0))
    assert np.asarray(decode(encode(image, "PNG")).image).min() == 255


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (12, 12), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50)
    red, _, blue = np.asarray(decode(buffer.getvalue()).image).reshape(-1, 3).mean(axis=0)
    assert red > 200 and blue < 60


def test_greyscale_and_bilevel_become_rgb() -> None:
    for mode in ("L", "1"):
        decoded = decode(encode(Image.new(mode, (9, 7), 255), "PNG"))
        assert decoded.image.mode == "RGB" and (decoded.width, decoded.height) == (9, 7)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"just some text pretending to be a jpeg\n", "look like text"),
        (bytes(range(256)) * 4, "unknown content"),
    ],
)
def test_non_images_raise_decode_error(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(data)


def test_truncated_jpeg_raises_decode_error() -> None:
    whole = encode(Image.effect_noise((256, 256), 60).convert("RGB"), "JPEG")
    with pytest.raises(DecodeError, match="corrupt or truncated|cannot be decoded"):
        decode(whole[: len(whole) // 3])


def test_decompression_bomb_guard_stays_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DecodeError, match="decompression-bomb"):
        decode(encode(Image.new("RGB", (100, 100)), "PNG"))


def test_formats_outside_the_raster_list_are_refused() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
    with pytest.raises(DecodeError):
        decode(eps)


def test_draft_decode_keeps_at_least_the_requested_side_and_reports_original_size() -> None:
    data = encode(Image.effect_noise((1920, 1080), 40).convert("RGB"), "JPEG")
    decoded = decode(data, min_side=224)
    assert (decoded.width, decoded.height) == (1920, 1080)
    assert min(decoded.image.size) >= 224
    assert decoded.image.size[0] < 1920  # the DCT-domain downscale happened


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", "PNG"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"GIF89a", "GIF"),
        (b"hello world", None),
    ],
)
def test_sniff_format(head: bytes, expected: str | None) -> None:
    assert sniff_format(head) == expected


def corrupt_png() -> bytes:
    """A PNG whose compressed pixels were overwritten in the middle: the header and size still read."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[50_000:50_064] = bytes(64)
    return bytes(data)


def test_a_file_plain_pillow_cannot_load_never_decodes() -> None:
    """PNG keeps EXIF after its pixels, so reading EXIF runs the decoder; when that fails the image is
    half-loaded and a second load() stays silent. It must be a decode failure, not a row."""
    data = corrupt_png()
    with pytest.raises(OSError):
        Image.open(io.BytesIO(data)).load()
    with pytest.raises(DecodeError, match="corrupt or truncated"):
        decode(data, min_side=224)


def test_only_errors_that_describe_the_file_are_decode_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from mmindex import decode as decode_module

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(buffer, "PNG")

    def broken(image: Image.Image) -> Image.Image:
        raise RuntimeError("a bug in mmindex, not in the file")

    monkeypatch.setattr(decode_module, "to_rgb", broken)
    with pytest.raises(
        RuntimeError, match="a bug"
    ):  # not a DecodeError: it must not be recorded as permanent
        decode(buffer.getvalue())
    assert decode_module.describes_the_file(OSError("broken data stream"))
    assert not decode_module.describes_the_file(ValueError("raised outside Pillow"))
