"""Thumbnails: aspect kept, never upscaled, the chosen format, bad settings refused."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from mmindex.errors import ConfigError
from mmindex.ingest.thumbnail import Thumbnailer, shrink


@pytest.mark.parametrize(("size", "expected"), [((1200, 800), (256, 171)), ((300, 2000), (38, 256))])
def test_long_side_is_the_size_and_aspect_is_kept(size: tuple[int, int], expected: tuple[int, int]) -> None:
    assert shrink(Image.new("RGB", size, (10, 200, 30)), 256).size == expected


def test_small_images_are_not_upscaled_and_colours_survive() -> None:
    image = Image.new("RGBA", (100, 60), (200, 30, 30, 255))
    data = Thumbnailer(size=256, format="jpeg").encode(image)
    decoded = Image.open(io.BytesIO(data))
    assert decoded.format == "JPEG" and decoded.size == (100, 60)
    red, green, blue = decoded.convert("RGB").getpixel((50, 30))
    assert red > 180 and green < 60 and blue < 60


def test_webp_is_the_default_and_small() -> None:
    image = Image.effect_noise((640, 480), 40).convert("RGB")
    data = Thumbnailer().encode(image)
    assert Image.open(io.BytesIO(data)).format == "WEBP" and len(data) < 30_000


@pytest.mark.parametrize("settings", [{"size": 4}, {"format": "gif"}, {"quality": 0}])
def test_bad_settings_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Thumbnailer(**settings)  # type: ignore[arg-type]
