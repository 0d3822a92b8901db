"""The embedder: loading any CLIP-style checkpoint, clear refusals, and the fast decode path's parity."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from transformers import AutoImageProcessor

from mmindex.errors import ModelError
from mmindex.ingest.decode import decode
from mmindex.models.clip import ClipEmbedder
from mmindex.models.precision import autocast_dtype, cpu_bf16_is_faster
from mmindex.toy.models import real_size_clip
from mmindex.toy.shapes import all_shapes, render

SIZES = [(640, 480), (1280, 720), (1920, 1080), (1080, 1920), (3000, 2000)]


def photo_like_jpeg(size: tuple[int, int], seed: int) -> bytes:
    """A large JPEG with a shape, texture and soft edges (what a camera gives, roughly)."""
    rng = random.Random(seed)
    spec = all_shapes()[seed % len(all_shapes())]
    image = render(spec, size, rng)
    texture = Image.effect_noise(size, 25).convert("RGB")
    image = Image.blend(image, texture, 0.15).filter(ImageFilter.GaussianBlur(1.2))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


def both_paths(embedder: ClipEmbedder, blobs: list[bytes]) -> tuple[np.ndarray, np.ndarray, float]:
    """Embeddings through mmindex's path (draft decode + numpy preprocessing) and the reference
    path (full decode + the transformers processor); also the mean absolute pixel difference."""
    processor = AutoImageProcessor.from_pretrained(embedder.ref.location, backend="pil")
    ours = np.stack(
        [embedder.preprocess(decode(b, min_side=embedder.preprocess.min_side).image) for b in blobs]
    )
    reference = np.stack(
        [
            processor(images=Image.open(io.BytesIO(b)).convert("RGB"), return_tensors="np")["pixel_values"][0]
            for b in blobs
        ]
    )
    return (
        embedder.embed_pixels(ours),
        embedder.embed_pixels(reference),
        float(np.abs(ours - reference).mean()),
    )


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    return [photo_like_jpeg(size, seed) for seed, size in enumerate(SIZES)]


def test_fast_jpeg_path_matches_reference_with_the_trained_toy_model(jpegs: list[bytes]) -> None:
    embedder = ClipEmbedder.load("toy-clip")
    ours, reference, pixel_error = both_paths(embedder, jpegs)
    assert cosine(ours, reference).min() >= 0.99
    # Control: different images are far apart, so the 0.99 bar above can fail.
    others = cosine(reference[:, None, :], reference[None, :, :])[~np.eye(len(jpegs), dtype=bool)]
    assert others.max() < 0.9
    assert pixel_error < 0.05


def test_fast_jpeg_path_matches_reference_at_vit_b32_scale(tmp_path: Path, jpegs: list[bytes]) -> None:
    """A randomly initialised ViT-B/32 (real input size and depth). Random towers map every image to
    nearly the same direction, so embeddings are centred on the set's mean before comparing."""
    embedder = ClipEmbedder.load(str(real_size_clip(tmp_path / "vit-b32")))
    ours, reference, pixel_error = both_paths(embedder, jpegs)
    centre = reference.mean(axis=0)
    assert cosine(ours - centre, reference - centre).min() >= 0.99
    others = cosine((reference - centre)[:, None, :], (reference - centre)[None, :, :])
    assert others[~np.eye(len(jpegs), dtype=bool)].max() < 0.9
    assert pixel_error < 0.05


def test_embeddings_are_unit_vectors_of_the_model_dimension(tiny_clip: str) -> None:
    embedder = ClipEmbedder.load(tiny_clip)
    images = embedder.embed_images([Image.new("RGB", (40, 30), (255, 0, 0)), Image.new("L", (5, 90), 128)])
    texts = embedder.embed_texts(["a red circle", "a long caption " * 40])  # truncated to the context length
    assert images.shape == (2, embedder.dim) and texts.shape == (2, embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert images.dtype == np.float32


def test_int8_quantisation_stays_within_cosine_099_of_fp32() -> None:
    fp32 = ClipEmbedder.load("toy-clip")
    int8 = ClipEmbedder.load("toy-clip", quantize="int8")
    rng = random.Random(5)
    images = [render(spec, (160, 120), rng) for spec in all_shapes()]
    image_cosines = cosine(fp32.embed_images(images), int8.embed_images(images))
    texts = [f"a photo of a {s.colour} {s.shape}" for s in all_shapes()]
    text_cosines = cosine(fp32.embed_texts(texts), int8.embed_texts(texts))
    assert image_cosines.min() >= 0.99 and text_cosines.min() >= 0.99
    assert type(int8.model.vision_model.encoder.layers[0].mlp.fc1).__module__.startswith(
        "torch.ao.nn.quantized"
    )


def test_bf16_embeddings_stay_within_cosine_0999_of_fp32_and_rank_alike() -> None:
    """`auto` picks bf16 on CPUs with fast native bf16, so bf16 must not change what a search finds."""
    fp32 = ClipEmbedder.load("toy-clip", precision="fp32")
    bf16 = ClipEmbedder.load("toy-clip", precision="bf16")
    assert fp32.autocast is None and bf16.autocast is torch.bfloat16
    rng = random.Random(11)
    images = [render(spec, (160, 120), rng) for spec in all_shapes()]
    texts = [f"a photo of a {s.colour} {s.shape}" for s in all_shapes()]
    image_vectors = fp32.embed_images(images), bf16.embed_images(images)
    text_vectors = fp32.embed_texts(texts), bf16.embed_texts(texts)
    assert cosine(*image_vectors).min() >= 0.999 and cosine(*text_vectors).min() >= 0.999
    best_fp32 = (text_vectors[0] @ image_vectors[0].T).argmax(axis=1)
    best_bf16 = (text_vectors[1] @ image_vectors[1].T).argmax(axis=1)
    np.testing.assert_array_equal(best_fp32, best_bf16)


def test_auto_precision_on_cpu_is_bf16_only_where_bf16_is_native_and_faster(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cpu = torch.device("cpu")
    native_and_faster = cpu_bf16_is_faster()
    assert autocast_dtype(cpu, "auto") is (torch.bfloat16 if native_and_faster else None)
    assert ClipEmbedder.load("toy-clip").autocast is autocast_dtype(cpu, "auto")
    assert ClipEmbedder.load("toy-clip", quantize="int8").autocast is None  # int8 kernels compute in fp32
    cpu_bf16_is_faster.cache_clear()
    # A CPU without native bf16 cannot be conjured here; its capability report can.
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": False})
    try:
        assert autocast_dtype(cpu, "auto") is None
        assert autocast_dtype(cpu, "bf16") is torch.bfloat16  # asked for explicitly, it is given
    finally:
        cpu_bf16_is_faster.cache_clear()


def test_model_errors_are_one_clear_line(tmp_path: Path, tiny_clip: str) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        ClipEmbedder.load(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        ClipEmbedder.load(str(tmp_path / "empty"))
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 32}))
    with pytest.raises(ModelError, match="not a CLIP-style"):
        ClipEmbedder.load(str(bert))
    with pytest.raises(ModelError, match="cannot load model 'nobody/no-such-model'"):
        ClipEmbedder.load("nobody/no-such-model")
    with pytest.raises(ModelError, match="runs on the CPU only|no CUDA device"):
        ClipEmbedder.load(tiny_clip, device="cuda", quantize="int8")
    with pytest.raises(ModelError, match="int8 computes in fp32; drop --precision bf16"):
        ClipEmbedder.load(tiny_clip, quantize="int8", precision="bf16")
    with pytest.raises(ModelError, match="--precision must be one of"):
        ClipEmbedder.load(tiny_clip, precision="fp8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_asking_for_cuda_without_one_is_a_model_error(tiny_clip: str) -> None:
    with pytest.raises(ModelError, match="no CUDA device"):
        ClipEmbedder.load(tiny_clip, device="cuda")
