"""Small transformers models built from configs: the toy models' architecture, test fixtures and the
randomly initialised real-size CLIP used by benchmarks (compute cost does not depend on weight values).

Everything is saved with `save_pretrained`, so it loads exactly like a downloaded checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mmindex.toy.shapes import COLOURS, SHAPES

TOY_WORDS = [
    "a",
    "an",
    "the",
    "of",
    "photo",
    "picture",
    "image",
    "shape",
    "on",
    "background",
    *COLOURS,
    *SHAPES,
]
_ALPHABET = list("abcdefghijklmnopqrstuvwxyz0123456789")


def clip_tokenizer(words: list[str] | None = None, max_length: int = 32) -> Any:
    """A CLIP BPE tokenizer whose vocabulary holds each toy word as one token (others spell out)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    words = words or TOY_WORDS
    bpe = Tokenizer(models.BPE(unk_token=None, end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(
        vocab_size=100 + 10 * len(words),
        special_tokens=["<|startoftext|>", "<|endoftext|>"],
        end_of_word_suffix="</w>",
        initial_alphabet=_ALPHABET,
        show_progress=False,
    )
    bpe.train_from_iterator([" ".join(words)] * 10, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges: Any = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return CLIPTokenizer(vocab=model["vocab"], merges=merges, model_max_length=max_length)


def tiny_clip(
    directory: str | Path,
    *,
    image_size: int = 32,
    patch_size: int = 8,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    projection: int = 32,
    text_layers: int | None = None,
    max_text_length: int = 32,
    seed: int = 0,
) -> Path:
    """Save a randomly initialised small CLIP (model, tokenizer, image processor) into `directory`."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    tokenizer = clip_tokenizer(max_length=max_text_length)
    common = dict(
        hidden_size=hidden, intermediate_size=hidden * 2, num_attention_heads=heads, projection_dim=projection
    )
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            num_hidden_layers=text_layers or layers,
            max_position_embeddings=max_text_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **common,
        ),
        vision_config=dict(num_hidden_layers=layers, image_size=image_size, patch_size=patch_size, **common),
        projection_dim=projection,
    )
    torch.manual_seed(seed)
    directory = Path(directory)
    CLIPModel(config).save_pretrained(directory)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessorPil(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        ),
        tokenizer=tokenizer,
    )
    processor.save_pretrained(directory)
    return directory


def real_size_clip(directory: str | Path, *, seed: int = 0) -> Path:
    """A randomly initialised CLIP with the ViT-B/32 configuration (openai/clip-vit-base-patch32's
    shapes and compute cost), with a small toy tokenizer in place of the 49k BPE vocabulary."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor

    tokenizer = clip_tokenizer(max_length=77)
    config = CLIPConfig(
        text_config=dict(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
    )
    torch.manual_seed(seed)
    directory = Path(directory)
    CLIPModel(config).save_pretrained(directory)
    CLIPProcessor(image_processor=CLIPImageProcessorPil(), tokenizer=tokenizer).save_pretrained(directory)
    return directory
