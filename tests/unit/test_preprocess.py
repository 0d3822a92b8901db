"""The numpy preprocessing reproduces transformers' image processors exactly."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from transformers import BlipImageProcessorPil, CLIPImageProcessorPil

from mmindex.models.preprocess import ImagePreprocessor, ProcessorCall, preprocessor_for


def noise(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    return Image.effect_noise(size, 64).convert(mode)


@pytest.mark.parametrize(
    "size", [(224, 224), (500, 333), (333, 500), (1000, 225), (100, 77), (1, 1), (640, 480)]
)
def test_clip_processor_is_reproduced_bit_for_bit(size: tuple[int, int]) -> None:
    processor = CLIPImageProcessorPil()
    fast = preprocessor_for(processor)
    assert isinstance(fast, ImagePreprocessor) and fast.min_side == 224
    image = noise(size)
    reference = processor(images=[image], return_tensors="np")["pixel_values"][0]
    np.testing.assert_array_equal(fast(image), reference)


def test_fixed_size_processor_is_reproduced() -> None:
    processor = BlipImageProcessorPil(size={"height": 96, "width": 96})
    fast = preprocessor_for(processor)
    assert isinstance(fast, ImagePreprocessor) and fast.resize_to == (96, 96)
    image = noise((150, 90))
    np.testing.assert_allclose(
        fast(image), processor(images=[image], return_tensors="np")["pixel_values"][0], atol=1e-6
    )


def test_unusual_processors_fall_back_to_calling_the_processor() -> None:
    processor = CLIPImageProcessorPil(size={"longest_edge": 64})
    fallback = preprocessor_for(processor)
    assert isinstance(fallback, ProcessorCall)
