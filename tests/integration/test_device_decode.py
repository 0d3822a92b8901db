"""The GPU input path's CPU fallbacks: uint8 pixels normalised on the device, and the batch decoder
(nvImageCodec on CUDA) decoding on the CPU and resizing with torch where there is no GPU."""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from mmindex.decode import decode
from mmindex.ingest.pipeline import IndexOptions, run_index
from mmindex.ingest.sources import open_source
from mmindex.ingest.steps import embed_role
from mmindex.models.clip import ClipEmbedder
from mmindex.models.device_decode import DeviceDecoder, resize_and_crop
from mmindex.models.preprocess import ImagePreprocessor, model_input
from mmindex.store.reader import Store
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


def test_a_run_that_keeps_jpegs_encoded_for_the_embedder_indexes_like_the_cpu_path(
    tmp_path: Path, embedder: ClipEmbedder
) -> None:
    """The pipeline's GPU decode path (JPEGs reach the embedder encoded; only headers are read while
    loading), run with the batch decoder's CPU fallback: the same rows as the CPU path, and a JPEG
    whose header reads but whose body is corrupt becomes a decode failure, not a lost batch."""
    source = tmp_path / "src"
    source.mkdir()
    for seed, size in enumerate([(500, 375), (375, 500), (1920, 1080), (640, 480), (333, 500)]):
        (source / f"{seed}.jpg").write_bytes(encoded(size, seed))
    (source / "flat.png").write_bytes(encoded((320, 240), 7, "PNG"))
    good = encoded((640, 480), 8)
    (source / "broken.jpg").write_bytes(good[: len(good) // 3] + bytes(len(good) // 3))
    on_device = ClipEmbedder.load("toy-clip")
    on_device.device_decoder = DeviceDecoder(on_device.preprocess, CPU)  # type: ignore[arg-type]
    assert embed_role(on_device, alone=True).__class__.__name__ == "EncodedJpeg"
    assert embed_role(on_device, alone=False) is on_device.preprocess  # thumbnails need the pixels here
    results = {}
    for name, model in (("cpu", embedder), ("device", on_device)):
        store = Store(str(tmp_path / f"db-{name}"))
        report = run_index(
            open_source(str(source)), model, store, IndexOptions(batch_size=4, thumbnails=None)
        )
        table = store.lancedb_table().to_arrow().sort_by("key").to_pylist()
        results[name] = (report, table, store.failure_rows())
    (cpu_report, cpu_rows, cpu_failures), (report, rows, failures) = results["cpu"], results["device"]
    assert [r["key"] for r in rows] == [r["key"] for r in cpu_rows] and len(rows) == 6
    for ours, reference in zip(rows, cpu_rows, strict=True):
        assert (ours["width"], ours["height"], ours["format"], ours["sha256"]) == (
            reference["width"], reference["height"], reference["format"], reference["sha256"],
        )  # fmt: skip
        assert float(np.dot(ours["image_embedding"], reference["image_embedding"])) >= 0.99
    assert [f["key"] for f in failures] == [f["key"] for f in cpu_failures] == ["broken.jpg"]
    assert failures[0]["stage"] == "decode" and not failures[0]["retryable"]
    assert report.indexed == cpu_report.indexed == 6
