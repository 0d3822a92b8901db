"""The toy text-to-image model: draws "a {colour} {shape}" prompts, trained on the generated shapes.

It is a neural renderer, small enough to train in a minute on a CPU: a bag-of-words text encoder of
its own (the toy vocabulary), and a per-pixel network that, given the text and a pixel's position
relative to a layout drawn from the image's seed (centre, size, rotation), predicts the pixel's
colour and opacity over a pale background. The seed fixes the layout, so each image is reproducible
on its own; the text decides what is drawn. `scripts/train_toy.py generator` trains it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmindex.toy.shapes import COLOURS, SHAPES

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
MODEL_TYPE = "mmindex-toy-generator"
BACKGROUND = (225, 225, 225)
HARMONICS = 5  # angular frequencies the network sees: enough for a five-pointed star


@dataclass(frozen=True)
class Layout:
    """Where the shape goes, in units of the image's shorter side (as the shapes corpus draws it)."""

    cx: float
    cy: float
    radius: float
    angle: float

    @classmethod
    def from_seed(cls, seed: int, width: int, height: int) -> Layout:
        rng = random.Random(seed)
        short = min(width, height)
        radius = rng.uniform(0.22, 0.4) * short
        cx, cy = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
        return cls(cx / short, cy / short, radius / short, rng.uniform(0, 2 * math.pi))


def is_toy_generator(directory: Path) -> bool:
    config = directory / CONFIG
    return config.is_file() and json.loads(config.read_text()).get("model_type") == MODEL_TYPE


def build(vocabulary: list[str], width: int = 32, hidden: int = 64) -> Any:
    """The network (torch), untrained."""
    import torch
    from torch import nn

    class ToyGeneratorNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vocabulary = vocabulary
            self.words = nn.EmbeddingBag(len(vocabulary) + 1, width, mode="mean")  # last: padding
            self.pixel = nn.Sequential(
                nn.Linear(width + 2 + 2 * HARMONICS, hidden), nn.SiLU(),
                nn.Linear(hidden, hidden), nn.SiLU(),
                nn.Linear(hidden, hidden), nn.SiLU(),
                nn.Linear(hidden, 4),
            )  # fmt: skip

        def encode(self, prompts: list[str]) -> Any:
            index = {word: i for i, word in enumerate(self.vocabulary)}
            ids = [
                [index[w] for w in prompt.lower().split() if w in index] or [len(index)] for prompt in prompts
            ]
            flat = torch.tensor([i for row in ids for i in row])
            offsets = torch.tensor([0, *np.cumsum([len(row) for row in ids])[:-1].tolist()])
            return self.words(flat, offsets)

        def forward(self, text: Any, layout: Any, width: int, height: int) -> Any:
            """RGB in [0, 1], (batch, 3, height, width); `layout`: (batch, 4) cx, cy, radius, angle."""
            colour, alpha = self.layers(text, layout, width, height)
            background = torch.tensor(BACKGROUND, dtype=colour.dtype) / 255
            return (alpha * colour + (1 - alpha) * background).permute(0, 3, 1, 2)

        def layers(self, text: Any, layout: Any, width: int, height: int) -> tuple[Any, Any]:
            """The shape's colour (batch, height, width, 3) and its opacity logits (..., 1) turned into
            opacity."""
            short = min(width, height)
            ys, xs = torch.meshgrid(
                (torch.arange(height) + 0.5) / short, (torch.arange(width) + 0.5) / short, indexing="ij"
            )
            cx, cy, radius, angle = (layout[:, i, None, None] for i in range(4))
            dx, dy = (xs[None] - cx) / radius, (ys[None] - cy) / radius
            cos, sin = torch.cos(angle), torch.sin(angle)
            u, v = cos * dx + sin * dy, -sin * dx + cos * dy  # the pixel in the shape's own frame
            batch = text.shape[0]
            theta = torch.atan2(v, u)
            # polar coordinates with angular harmonics: a shape's outline is a radius per angle
            polar = [torch.sqrt(u * u + v * v), torch.ones_like(u)]
            polar += [f(k * theta) for k in range(1, HARMONICS + 1) for f in (torch.cos, torch.sin)]
            features = torch.cat(
                [text[:, None, None, :].expand(batch, height, width, text.shape[1]), torch.stack(polar, -1)],
                -1,
            )
            out = self.pixel(features)
            return torch.sigmoid(out[..., :3]), torch.sigmoid(out[..., 3:])

    return ToyGeneratorNet()


def vocabulary() -> list[str]:
    return [*COLOURS, *SHAPES]


def save(net: Any, directory: Path) -> None:
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    config = {"model_type": MODEL_TYPE, "vocabulary": net.vocabulary, "width": net.words.embedding_dim,
              "hidden": net.pixel[0].out_features, "default_size": 64}  # fmt: skip
    (directory / CONFIG).write_text(json.dumps(config, indent=1))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(directory / WEIGHTS))


class ToyTextToImage:
    """The toy generator behind the same interface as a diffusers pipeline (mmindex.models.generator)."""

    def __init__(self, directory: Path, name: str) -> None:
        from safetensors.torch import load_file

        config = json.loads((directory / CONFIG).read_text())
        self.net = build(config["vocabulary"], config["width"], config["hidden"])
        self.net.load_state_dict(load_file(str(directory / WEIGHTS)))
        self.net.eval()
        self.model_id, self.compute = name, f"{name} on cpu in fp32"

    def generate(self, prompts: list[str], seeds: list[int], settings: Any) -> list[Any]:
        import torch
        from PIL import Image

        width, height = settings.width, settings.height
        layouts = [Layout.from_seed(seed, width, height) for seed in seeds]
        layout = torch.tensor(
            [[lay.cx, lay.cy, lay.radius, lay.angle] for lay in layouts], dtype=torch.float32
        )
        with torch.inference_mode():
            pixels = self.net(self.net.encode(prompts), layout, width, height)
        array = (pixels.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        return [Image.fromarray(image, "RGB") for image in array]

    def defaults(self, settings: Any) -> Any:
        return dataclasses.replace(settings, steps=1, guidance=None)  # one pass, no guidance
