"""The GPU input path's CPU fallbacks: uint8 pixels normalised on the device, and the batch decoder
(nvImageCodec on CUDA) decoding on the CPU and resizing with torch where there is no GPU."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from mmindex.ingest.decode import decode
from mmindex.models.clip import ClipEmbedder
from mmindex.models.device_decode import DeviceDecoder, resize_and_crop
from mmindex.models.preprocess import ImagePreprocessor, model_input
from mmindex.toy.shapes import all_shapes, render

CPU = torch.device("cpu")


def encoded(size: tuple[int, int], seed: int, image_format: str = "JPEG") -> bytes:
    rng = random.Random(seed)
    image = render(all_shapes()[seed % len(all_shapes())], size, rng)
    image = Image.blend(image, Image.effect_noise(size, 25).convert("RGB"), 0.15).filter(
        ImageFilter.GaussianBlur(1)
    )
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def embedder() -> ClipEmbedder:
    return ClipEmbedder.load("toy-clip")


def test_uint8_pixels_normalised_on_the_device_equal_the_float_path(embedder: ClipEmbedder) -> None:
    assert isinstance(embedder.preprocess, ImagePreprocessor) and embedder.preprocess.uint8
    image = decode(encoded((640, 480), 1), min_side=embedder.preprocess.min_side).image
    as_bytes = embedder.preprocess(image)
    as_floats = embedder.preprocess.__class__(**{**embedder.preprocess.__dict__, "uint8": False})(image)
    assert as_bytes.dtype == np.uint8 and as_floats.dtype == np.float32
    np.testing.assert_allclose(
        model_input(as_bytes[None], embedder.preprocess, CPU).numpy()[0], as_floats, atol=1e-5
    )
    np.testing.assert_allclose(
        embedder.embed_pixels(as_bytes[None]), embedder.embed_pixels(as_floats[None]), atol=1e-5
    )


def test_without_a_gpu_the_batch_decoder_decodes_on_the_cpu_and_matches_pillow(
    embedder: ClipEmbedder,
) -> None:
    preprocess = embedder.preprocess
    assert isinstance(preprocess, ImagePreprocessor)
    blobs = [
        encoded(size, seed) for seed, size in enumerate([(500, 375), (375, 500), (1920, 1080), (300, 2400)])
    ]
    blobs.insert(2, encoded((320, 240), 9, "PNG"))  # not a JPEG: the CPU path on a GPU too
    blobs.insert(1, b"\xff\xd8\xff" + b"garbage" * 50)  # a corrupt JPEG
    decoder = DeviceDecoder(preprocess, CPU)
    assert decoder.gpu is None
    pixels, failed = decoder(blobs)
    assert failed == [1]
    good = [blob for i, blob in enumerate(blobs) if i not in failed]
    assert pixels.dtype == torch.uint8 and tuple(pixels.shape) == (
        len(good),
        *preprocess(Image.new("RGB", (64, 64))).shape,
    )
    pillow = np.stack([preprocess(decode(blob, min_side=preprocess.min_side).image) for blob in good])
    difference = np.abs(pixels.numpy().astype(np.int16) - pillow.astype(np.int16))
    assert difference.mean() < 2.0  # torch's bicubic kernel is not Pillow's, by a grey level or so
    ours, reference = embedder.embed_pixels(pixels.numpy()), embedder.embed_pixels(pillow)
    assert (ours * reference).sum(axis=1).min() >= 0.99
    others = reference @ reference.T
    assert others[~np.eye(len(good), dtype=bool)].max() < 0.99  # control: the bar above can fail


def test_resize_keeps_the_aspect_and_crops_the_centre() -> None:
    preprocess = ImagePreprocessor(
        shortest_edge=32,
        resize_to=None,
        crop=(32, 32),
        resample=3,
        rescale_factor=1 / 255,
        mean=None,
        std=None,
        uint8=True,
    )
    image = torch.zeros((3, 100, 200), dtype=torch.uint8)
    image[:, :, 75:125] = 255  # a white band in the middle: it must stay in the middle of the crop
    crop = resize_and_crop(image, preprocess)
    assert tuple(crop.shape) == (3, 32, 32)
    assert crop[:, :, 14:18].float().mean() > 250 and crop[:, :, :4].float().mean() < 5
    pillow = torch.from_numpy(preprocess(Image.fromarray(image.permute(1, 2, 0).numpy())))
    assert (crop.int() - pillow.int()).abs().float().mean() < 4
