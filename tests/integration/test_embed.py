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

from mmindex.decode import decode
from mmindex.errors import ConfigError, ModelError
from mmindex.models.clip import ClipEmbedder, load_parts
from mmindex.models.execution import (
    BF16_AUTOCAST,
    BF16_WEIGHTS,
    FP16_WEIGHTS,
    FP32,
    Mode,
    apply_mode,
    candidates,
    choose_mode,
)
from mmindex.models.precision import cpu_kind, detected_cpu_kind, native_bf16
from mmindex.models.preprocess import model_input
from mmindex.models.resolve import resolve_model
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
    assert ours.dtype == np.uint8  # pixels travel as bytes; the model's device normalises them
    normalised = model_input(ours, embedder.preprocess, torch.device("cpu")).numpy()
    return (
        embedder.embed_pixels(ours),
        embedder.embed_pixels(reference),
        float(np.abs(normalised - reference).mean()),
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


@pytest.fixture(scope="module")
def vit_b32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return real_size_clip(tmp_path_factory.mktemp("vit-b32"))


def test_fast_jpeg_path_matches_reference_at_vit_b32_scale(vit_b32: Path, jpegs: list[bytes]) -> None:
    """A randomly initialised ViT-B/32 (real input size and depth). Random towers map every image to
    nearly the same direction, so embeddings are centred on the set's mean before comparing."""
    embedder = ClipEmbedder.load(str(vit_b32))
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


def in_mode(reference: str, mode: Mode) -> ClipEmbedder:
    """An embedder that runs in `mode`, whatever this CPU would choose."""
    ref = resolve_model(reference)
    model, tokenizer, processor = load_parts(ref)
    return ClipEmbedder(
        apply_mode(model.eval(), mode), tokenizer, processor, ref, torch.device("cpu"), mode=mode
    )


@pytest.mark.parametrize("mode", [BF16_WEIGHTS, BF16_AUTOCAST, FP16_WEIGHTS], ids=lambda m: m.name)
def test_every_mode_auto_can_pick_stays_within_cosine_099_and_finds_the_same_best_match(mode: Mode) -> None:
    """`auto` may pick any of these (bf16 on CPUs with fast native bf16, fp16 on CUDA): none may
    change what a search finds on the toy model."""
    fp32, other = in_mode("toy-clip", FP32), in_mode("toy-clip", mode)
    assert other.mode is mode and next(other.model.parameters()).dtype == mode.weights_dtype()
    rng = random.Random(11)
    images = [render(spec, (160, 120), rng) for spec in all_shapes()]
    texts = [f"a photo of a {s.colour} {s.shape}" for s in all_shapes()]
    image_vectors = fp32.embed_images(images), other.embed_images(images)
    text_vectors = fp32.embed_texts(texts), other.embed_texts(texts)
    assert cosine(*image_vectors).min() >= 0.99 and cosine(*text_vectors).min() >= 0.99
    best_fp32 = (text_vectors[0] @ image_vectors[0].T).argmax(axis=1)
    best_other = (text_vectors[1] @ image_vectors[1].T).argmax(axis=1)
    np.testing.assert_array_equal(best_fp32, best_other)
    assert image_vectors[1].dtype == np.float32


@pytest.mark.parametrize("mode", [BF16_WEIGHTS, BF16_AUTOCAST], ids=lambda m: m.name)
def test_bf16_modes_stay_within_cosine_099_at_vit_b32_scale(
    vit_b32: Path, jpegs: list[bytes], mode: Mode
) -> None:
    """Twelve layers accumulate rounding that two toy layers do not (bf16 is emulated, slowly, where the
    CPU lacks it, so a few images)."""
    fp32, other = in_mode(str(vit_b32), FP32), in_mode(str(vit_b32), mode)
    pixels = np.stack([fp32.preprocess(decode(b, min_side=224).image) for b in jpegs[:3]])
    reference, vectors = fp32.embed_pixels(pixels), other.embed_pixels(pixels)
    centre = reference.mean(axis=0)  # random towers map every image near one direction
    assert cosine(vectors, reference).min() >= 0.99
    assert cosine(vectors - centre, reference - centre).min() >= 0.9
    texts = ["a photo of a dog", "two red bicycles leaning on a wall"]
    assert cosine(fp32.embed_texts(texts), other.embed_texts(texts)).min() >= 0.99


def test_int8_text_queries_stay_right_and_leave_the_image_tower_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The search server's int8 text tower, forced past its size test (the toy model is too small to
    gain): same best match for every toy query, cosine >= 0.99, images exactly as before."""
    import mmindex.models.text_int8 as text_int8

    rng = random.Random(13)
    images = [render(spec, (160, 120), rng) for spec in all_shapes()]
    texts = [f"a photo of a {s.colour} {s.shape}" for s in all_shapes()]
    embedder = ClipEmbedder.load("toy-clip", device="cpu", precision="fp32")  # int8 text: fp32 models only
    image_vectors, fp32_texts = embedder.embed_images(images), embedder.embed_texts(texts)
    monkeypatch.setattr(text_int8, "MIN_INT8_WEIGHTS", 0)
    assert "text queries in int8" in embedder.speed_up_text_queries(texts)
    int8_texts = embedder.embed_texts(texts)
    assert cosine(int8_texts, fp32_texts).min() >= 0.99 and not np.array_equal(int8_texts, fp32_texts)
    np.testing.assert_array_equal(
        (int8_texts @ image_vectors.T).argmax(axis=1), (fp32_texts @ image_vectors.T).argmax(axis=1)
    )
    np.testing.assert_array_equal(embedder.embed_images(images), image_vectors)
    tower = embedder._text_model
    assert type(tower.text_model.encoder.layers[0].mlp.fc1).__module__.startswith("torch.ao.nn.quantized")
    assert (
        tower.vision_model.encoder.layers[0].mlp.fc1
        is not embedder.model.vision_model.encoder.layers[0].mlp.fc1
    )
    assert (
        tower.vision_model.encoder.layers[0].mlp.fc1.weight
        is embedder.model.vision_model.encoder.layers[0].mlp.fc1.weight
    )


def test_int8_text_queries_are_refused_when_slower_or_wrong(monkeypatch: pytest.MonkeyPatch) -> None:
    import mmindex.models.text_int8 as text_int8

    embedder = ClipEmbedder.load("toy-clip", device="cpu", precision="fp32")
    before = embedder.embed_texts(["a red circle"])
    assert "too small to gain from int8" in embedder.speed_up_text_queries(["a red circle"])  # the toy
    assert embedder._text_model is None
    np.testing.assert_array_equal(embedder.embed_texts(["a red circle"]), before)

    def broken_copy(model: object) -> object:
        import copy

        wrong = copy.deepcopy(model)
        with torch.no_grad():
            for layer in wrong.text_model.encoder.layers:  # type: ignore[attr-defined]
                layer.mlp.fc2.weight.mul_(-3.0)
        return wrong

    monkeypatch.setattr(text_int8, "MIN_INT8_WEIGHTS", 0)
    monkeypatch.setattr(text_int8, "int8_text_copy", broken_copy)
    assert "drift" in embedder.speed_up_text_queries(["a red circle", "a blue star"])
    assert embedder._text_model is None

    def uncopyable(model: object) -> object:
        raise RuntimeError("Didn't find engine for operation quantized::linear_prepack NoQEngine")

    monkeypatch.setattr(text_int8, "int8_text_copy", uncopyable)  # a torch built without int8 kernels
    assert "no int8 text tower: RuntimeError" in embedder.speed_up_text_queries(["a red circle"])
    np.testing.assert_array_equal(embedder.embed_texts(["a red circle"]), before)


@pytest.mark.parametrize(
    ("flags", "kind"),
    [
        ({"amx_bf16": True, "avx512_bf16": True, "avx2": True}, "amx"),
        ({"avx512_bf16": True, "avx2": True}, "avx512_bf16"),
        ({"avx2": True}, None),  # torch's own kernel level: avx2 or avx512 on this machine
    ],
)
def test_the_cpu_kind_comes_from_the_cpu_flags_or_the_environment(
    monkeypatch: pytest.MonkeyPatch, flags: dict[str, bool], kind: str | None
) -> None:
    """Each kind's flags are forced: the kinds this machine is not are covered here."""
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    monkeypatch.delenv("MMINDEX_CPU_KIND")
    detected_cpu_kind.cache_clear()
    try:
        expected = kind or torch.backends.cpu.get_cpu_capability().lower()
        assert cpu_kind() == expected and native_bf16() == (kind is not None)
        monkeypatch.setenv("MMINDEX_CPU_KIND", "AMX")
        assert cpu_kind() == "amx" and native_bf16()
        monkeypatch.setenv("MMINDEX_CPU_KIND", "pentium")
        with pytest.raises(ConfigError, match="MMINDEX_CPU_KIND must be one of amx, avx512_bf16"):
            cpu_kind()
    finally:
        detected_cpu_kind.cache_clear()


def test_candidates_per_device_and_precision() -> None:
    assert candidates("cuda", "auto", native_cpu_bf16=False) == (FP16_WEIGHTS, BF16_WEIGHTS, FP32)
    assert candidates("cuda", "auto", native_cpu_bf16=False, cuda_bf16=False) == (FP16_WEIGHTS, FP32)
    assert candidates("cpu", "auto", native_cpu_bf16=True) == (BF16_WEIGHTS, BF16_AUTOCAST, FP32)
    assert candidates("cpu", "auto", native_cpu_bf16=False) == (FP32,)
    assert candidates("cpu", "fp32", native_cpu_bf16=True) == (FP32,)
    assert candidates("cpu", "bf16", native_cpu_bf16=False) == (BF16_WEIGHTS, BF16_AUTOCAST)
    assert candidates("cuda", "bf16", native_cpu_bf16=False) == (BF16_WEIGHTS,)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [("avx2", FP32), ("avx512", FP32), ("avx512_bf16", BF16_WEIGHTS), ("amx", BF16_WEIGHTS)],
)
def test_auto_follows_the_cpu_kind_and_every_load_agrees(
    monkeypatch: pytest.MonkeyPatch, kind: str, expected: Mode
) -> None:
    """Two loads of the toy model as a CPU of `kind` (forced: no timing is involved, so a busy
    machine cannot change the verdict) choose the same mode and give identical embeddings."""
    monkeypatch.setenv("MMINDEX_CPU_KIND", kind)
    first, second = ClipEmbedder.load("toy-clip"), ClipEmbedder.load("toy-clip")
    assert first.mode is second.mode is expected
    assert first.embed_mode == f"{expected.name} on cpu" and f"on cpu in {expected.name}" in first.compute
    pixels = first._probe_pixels(3)
    np.testing.assert_array_equal(first.embed_pixels(pixels), second.embed_pixels(pixels))
    np.testing.assert_array_equal(first.embed_texts(["a red circle"]), second.embed_texts(["a red circle"]))


def test_a_mode_whose_embeddings_go_wrong_is_never_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first candidate that stays right wins: here bf16 weights break, autocast does not; then
    both break and fp32 is left."""
    monkeypatch.setenv("MMINDEX_CPU_KIND", "amx")
    model = ClipEmbedder.load("toy-clip", precision="fp32")
    pixels = model._probe_pixels(2)

    def breaking(*broken: Mode) -> object:
        def probe(candidate: object, mode: Mode) -> torch.Tensor:
            vectors = model._forward_images(pixels, model=candidate, mode=mode)
            return vectors.flip(0) if mode in broken else vectors

        return probe

    cpu = torch.device("cpu")
    assert choose_mode(model.model, cpu, "auto", [breaking(BF16_WEIGHTS)]) is BF16_AUTOCAST
    assert choose_mode(model.model, cpu, "auto", [breaking(BF16_WEIGHTS, BF16_AUTOCAST)]) is FP32


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


TRICKY_TEXTS = [
    "a red circle",
    "Two  BLUE squares\ton a long grey road at night, under 3 lamps!!",
    "café déjà-vu: naïve façade 🙂 (x2)",
    "it's what they'll've done",
    " ".join(["a very long caption that goes on"] * 12),  # past the context: truncated
]


@pytest.mark.parametrize("variant", ["as saved", "gelu", "eos id 2"])
def test_the_text_tower_alone_embeds_texts_as_the_whole_model_does_in_fp32(
    tiny_clip: str, tmp_path: Path, variant: str
) -> None:
    """The lean text tower (plain torch, no transformers) against transformers' whole model, with
    the activations and the legacy end-of-text rule other CLIP configs use."""
    import json
    import shutil

    from mmindex.models.text_tower import TextTower

    model = tmp_path / "model"
    shutil.copytree(tiny_clip, model)
    config = json.loads((model / "config.json").read_text())
    if variant == "gelu":
        config["text_config"]["hidden_act"] = "gelu"
    if variant == "eos id 2":
        config["text_config"]["eos_token_id"] = 2
    (model / "config.json").write_text(json.dumps(config))
    whole = ClipEmbedder.load(str(model), device="cpu", precision="fp32").embed_texts(TRICKY_TEXTS)
    alone = TextTower.load(str(model), device="cpu")
    assert alone.lean
    assert alone.embed_texts(TRICKY_TEXTS) == pytest.approx(whole, abs=1e-5)
    with pytest.raises(ModelError):  # the same one-line refusal as the whole model's
        TextTower.load(str(Path(tiny_clip) / "missing"), device="cpu")


def test_the_lean_tower_tokenizes_and_defaults_as_transformers_does(tiny_clip: str) -> None:
    from transformers import AutoTokenizer, CLIPTextConfig

    from mmindex.models.clip_text import TEXT_DEFAULTS, LeanClipText, lean_text_files
    from mmindex.models.resolve import resolve_model

    files = lean_text_files(resolve_model(tiny_clip))
    assert files is not None
    lean = LeanClipText(files, "cpu")
    theirs = AutoTokenizer.from_pretrained(tiny_clip)(
        TRICKY_TEXTS, padding=True, truncation=True, max_length=lean.max_text_tokens, return_tensors="pt"
    )
    assert lean.token_ids(TRICKY_TEXTS).tolist() == theirs["input_ids"].tolist()
    defaults = CLIPTextConfig()
    assert {name: getattr(defaults, name) for name in TEXT_DEFAULTS} == TEXT_DEFAULTS


def test_a_checkpoint_the_lean_tower_does_not_run_loads_with_transformers(
    tiny_clip: str, tmp_path: Path
) -> None:
    import json
    import shutil

    from mmindex.models.text_tower import TextTower

    model = tmp_path / "model"
    shutil.copytree(tiny_clip, model)
    config = json.loads((model / "config.json").read_text())
    config["text_config"]["hidden_act"] = "silu"  # an activation the lean tower does not compute
    (model / "config.json").write_text(json.dumps(config))
    tower = TextTower.load(str(model), device="cpu")
    assert not tower.lean
    whole = ClipEmbedder.load(str(model), device="cpu", precision="fp32").embed_texts(TRICKY_TEXTS[:2])
    assert tower.embed_texts(TRICKY_TEXTS[:2]) == pytest.approx(whole, abs=1e-6)
