"""Generated images of coloured shapes with captions: the data the toy models learn and the demo shows.

Every image holds one shape of one colour on a pale, slightly noisy background, at a random size,
position and rotation; its caption is "a {colour} {shape}". Generation is deterministic per seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (40, 160, 50),
    "blue": (35, 70, 215),
    "yellow": (240, 205, 25),
    "purple": (135, 45, 170),
    "orange": (245, 135, 25),
}
SHAPES = ("circle", "square", "triangle", "star")
# Colours the toy CLIP never saw (their names are not in its vocabulary; they spell out in letters):
# what the fine-tuning demo and tests teach it. The toy tokenizer knows a word-final form only of the
# letters its own words end in, so these names end in such letters (a "pink" would lose its "k").
NEW_COLOURS: dict[str, tuple[int, int, int]] = {
    "brown": (120, 72, 30),
    "cyan": (40, 205, 215),
    "magenta": (225, 40, 185),
}


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape}"


def all_shapes(colours: tuple[str, ...] | None = None) -> list[Shape]:
    return [Shape(colour, shape) for shape in SHAPES for colour in (colours or tuple(COLOURS))]


def render(spec: Shape, size: tuple[int, int], rng: random.Random) -> Image.Image:
    """One image of `spec` at `size` (width, height)."""
    width, height = size
    background = tuple(rng.randint(200, 250) for _ in range(3))
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 6, (height, width, 3))
    pixels = np.clip(np.asarray(background, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    radius = rng.uniform(0.22, 0.4) * min(width, height)
    cx = rng.uniform(radius, width - radius)
    cy = rng.uniform(radius, height - radius)
    rgb = COLOURS.get(spec.colour) or NEW_COLOURS[spec.colour]
    colour = tuple(max(0, min(255, c + rng.randint(-18, 18))) for c in rgb)
    angle = rng.uniform(0, 2 * math.pi)
    if spec.shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
    else:
        draw.polygon(_polygon(spec.shape, cx, cy, radius, angle), fill=colour)
    return image.filter(ImageFilter.SMOOTH) if rng.random() < 0.3 else image


def _polygon(shape: str, cx: float, cy: float, radius: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        corners, radii = 4, [radius * 0.95]
    elif shape == "triangle":
        corners, radii = 3, [radius * 1.1]
    elif shape == "star":
        corners, radii = 10, [radius * 1.1, radius * 0.45]
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return [
        (
            cx + radii[i % len(radii)] * math.cos(angle + 2 * math.pi * i / corners),
            cy + radii[i % len(radii)] * math.sin(angle + 2 * math.pi * i / corners),
        )
        for i in range(corners)
    ]


def samples(
    count: int,
    seed: int = 0,
    size_range: tuple[int, int] = (96, 320),
    colours: tuple[str, ...] | None = None,
) -> Iterator[tuple[Shape, Image.Image]]:
    """`count` (shape, image) pairs cycling through every colour (default: the toy CLIP's six) and
    shape; widths within `size_range`."""
    rng = random.Random(seed)
    specs = all_shapes(colours)
    for index in range(count):
        spec = specs[index % len(specs)] if index < len(specs) else rng.choice(specs)
        width = rng.randint(*size_range)
        height = max(
            8, round(width * rng.uniform(0.75, 1.33))
        )  # photo-like aspect: CLIP's centre crop keeps the shape
        yield spec, render(spec, (width, height), rng)


def write_corpus(
    root: str | Path,
    count: int = 48,
    *,
    seed: int = 0,
    captioned_fraction: float = 0.75,
    size_range: tuple[int, int] = (96, 320),
    colours: tuple[str, ...] | None = None,
) -> list[tuple[Path, Shape, bool]]:
    """Write a corpus of JPEG/PNG shapes into `root`, in two sub-folders, with `.txt` sidecar captions
    for about `captioned_fraction` of them. Returns (path, shape, has_sidecar) for each image."""
    root = Path(root)
    written: list[tuple[Path, Shape, bool]] = []
    rng = random.Random(seed + 1)
    for index, (spec, image) in enumerate(samples(count, seed, size_range, colours)):
        folder = root / ("set-a" if index % 2 == 0 else "set-b")
        folder.mkdir(parents=True, exist_ok=True)
        suffix = ".png" if index % 5 == 4 else ".jpg"
        path = folder / f"{index:04d}-{spec.colour}-{spec.shape}{suffix}"
        image.save(path, quality=90) if suffix == ".jpg" else image.save(path)
        captioned = rng.random() < captioned_fraction
        if captioned:
            path.with_suffix(".txt").write_text(spec.caption + "\n", encoding="utf-8")
        written.append((path, spec, captioned))
    return written
