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


def bert_tokenizer(words: list[str] | None = None) -> Any:
    """A BERT WordPiece tokenizer (as BLIP and GIT use) whose vocabulary is the toy words plus letters."""
    from transformers import BertTokenizer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    tokens = specials + list(
        dict.fromkeys([*(words or TOY_WORDS), *_ALPHABET, *[f"##{c}" for c in _ALPHABET]])
    )
    return BertTokenizer(vocab={token: i for i, token in enumerate(tokens)}, bos_token="[DEC]")


def gpt2_tokenizer(words: list[str] | None = None) -> Any:
    """A byte-level BPE tokenizer (as GPT-2 decoders use) that keeps each toy word in one token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Tokenizer

    words = words or TOY_WORDS
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300 + 10 * len(words),
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([" ".join(words)] * 10, trainer)
    model = json.loads(bpe.to_str())["model"]
    merges: Any = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return GPT2Tokenizer(vocab=model["vocab"], merges=merges)


def _tiny_vision(
    image_size: int, hidden: int, layers: int, heads: int, patch_size: int = 8
) -> dict[str, Any]:
    return dict(
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        image_size=image_size,
        patch_size=patch_size,
    )


def tiny_blip(
    directory: str | Path,
    *,
    image_size: int = 32,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    text_layers: int | None = None,
    seed: int = 0,
) -> Path:
    """A randomly initialised small BLIP captioner (BlipForConditionalGeneration + BlipProcessor)."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor

    tokenizer = bert_tokenizer()
    config = BlipConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=text_layers or layers,
            num_attention_heads=heads,
            max_position_embeddings=40,
            bos_token_id=tokenizer.bos_token_id,
            sep_token_id=tokenizer.sep_token_id,
            eos_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=_tiny_vision(image_size, hidden, layers, heads),
        projection_dim=hidden,
        image_text_hidden_size=hidden,
    )
    torch.manual_seed(seed)
    directory = Path(directory)
    BlipForConditionalGeneration(config).save_pretrained(directory)
    processor = BlipImageProcessorPil(size={"height": image_size, "width": image_size})
    BlipProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def tiny_git(
    directory: str | Path, *, image_size: int = 32, hidden: int = 32, layers: int = 2, seed: int = 0
) -> Path:
    """A randomly initialised small GIT captioner (GitForCausalLM + GitProcessor)."""
    import torch
    from transformers import CLIPImageProcessorPil, GitConfig, GitForCausalLM, GitProcessor

    tokenizer = bert_tokenizer()
    config = GitConfig(
        vision_config=_tiny_vision(image_size, hidden, layers, 2),
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=2,
        max_position_embeddings=64,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    directory = Path(directory)
    GitForCausalLM(config).save_pretrained(directory)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    GitProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def tiny_vision_encoder_decoder(
    directory: str | Path, *, image_size: int = 32, hidden: int = 32, layers: int = 2, seed: int = 0
) -> Path:
    """A randomly initialised ViT + GPT-2 VisionEncoderDecoderModel, saved like nlpconnect/vit-gpt2."""
    import torch
    from transformers import (
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessorPil,
    )

    tokenizer = gpt2_tokenizer()
    end = tokenizer.eos_token_id
    encoder = ViTConfig(**_tiny_vision(image_size, hidden, layers, 2))
    decoder = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=hidden,
        n_layer=layers,
        n_head=2,
        n_positions=64,
        bos_token_id=end,
        eos_token_id=end,
    )
    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(
        config=VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    )
    for config in (model.config, model.generation_config):  # generate() reads generation_config in v5
        config.decoder_start_token_id = end
        config.pad_token_id = end
        config.eos_token_id = end
    directory = Path(directory)
    model.save_pretrained(directory)
    ViTImageProcessorPil(size={"height": image_size, "width": image_size}).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def real_size_blip(directory: str | Path, *, seed: int = 0) -> Path:
    """A randomly initialised BLIP with the configuration of Salesforce/blip-image-captioning-base
    (its compute cost), with a small toy tokenizer in place of the 30k BERT vocabulary."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessorPil, BlipProcessor

    tokenizer = bert_tokenizer()
    config = BlipConfig(
        text_config=dict(
            bos_token_id=tokenizer.bos_token_id,
            sep_token_id=tokenizer.sep_token_id,
            eos_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(image_size=384, patch_size=16),
    )
    torch.manual_seed(seed)
    directory = Path(directory)
    BlipForConditionalGeneration(config).save_pretrained(directory)
    processor = BlipImageProcessorPil(size={"height": 384, "width": 384})
    BlipProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def tiny_text_to_image(directory: str | Path, seed: int = 0) -> Path:
    """Save a randomly initialised, tiny Stable Diffusion pipeline (UNet, VAE, CLIP text encoder with
    the toy tokenizer, Euler scheduler) into `directory`: for plumbing, not meaning."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer(max_length=77)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2,
    )  # fmt: skip
    vae = AutoencoderKL(
        block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )  # fmt: skip
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_attention_heads=2,
            num_hidden_layers=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        )
    )  # fmt: skip
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    pipeline: Any = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipeline.save_pretrained(str(directory))
    return Path(directory)
