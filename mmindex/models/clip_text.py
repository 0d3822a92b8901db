"""CLIP's text tower in plain torch, read from the model's own files without importing transformers.

A text query in a fresh process (`mmindex search "TEXT"`) needs the text half of the model only, and
transformers' import graph (its configuration, masking and loading modules reach torch.distributed
and torch._dynamo) costs 2-3 s on a 2-core machine: more than everything else the query does. For a
CLIP checkpoint whose files are on disk (a directory, a toy model, or a hub id already in the
Hugging Face cache), this module reads config.json, the text weights from model.safetensors and
tokenizer.json (with `tokenizers`, the library transformers' CLIP tokenizer runs on), and computes
what `CLIPModel.get_text_features` computes. `lean_text_files` says None for anything else, and the
caller loads the model with transformers.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmindex.models.resolve import ModelRef

# CLIPTextConfig's defaults, for keys a saved config leaves out (tests compare them with transformers')
TEXT_DEFAULTS = {
    "num_attention_heads": 8,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "eos_token_id": 49407,
    "max_position_embeddings": 77,
}
ACTIVATIONS = ("quick_gelu", "gelu", "gelu_new", "gelu_pytorch_tanh")
TOKENIZER_CLASSES = ("CLIPTokenizer", "CLIPTokenizerFast")
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class LeanTextFiles:
    """The files of a CLIP checkpoint this module can run, and what its config says."""

    config: dict[str, Any]
    weights: Path
    tokenizer: Path
    tokenizer_config: dict[str, Any]


def lean_text_files(ref: ModelRef) -> LeanTextFiles | None:
    """The checkpoint's files when they are on disk and describe a CLIP text tower this module
    computes exactly (model type, activation, tokenizer class, right-side padding, fp32 weights are
    checked when loading); None otherwise."""
    paths = _local_files(ref)
    if paths is None:
        return None
    try:
        config = json.loads(paths["config.json"].read_text())
        tokenizer_config = json.loads(paths["tokenizer_config.json"].read_text())
    except (OSError, ValueError):
        return None  # transformers says what is wrong with them
    text = config.get("text_config") or {}
    supported = (
        config.get("model_type") == "clip"
        and "vision_config" in config
        and text.get("hidden_act", TEXT_DEFAULTS["hidden_act"]) in ACTIVATIONS
        and tokenizer_config.get("tokenizer_class") in TOKENIZER_CLASSES
        and tokenizer_config.get("padding_side", "right") == "right"
        and tokenizer_config.get("truncation_side", "right") == "right"
    )
    if not supported:
        return None
    return LeanTextFiles(config, paths["model.safetensors"], paths["tokenizer.json"], tokenizer_config)


def _local_files(ref: ModelRef) -> dict[str, Path] | None:
    if ref.local:
        paths = {name: Path(ref.location) / name for name in FILES}
        return paths if all(path.is_file() for path in paths.values()) else None
    from huggingface_hub import try_to_load_from_cache

    found = {name: try_to_load_from_cache(ref.location, name) for name in FILES}
    if not all(isinstance(path, str) for path in found.values()):
        return None  # not cached yet: transformers downloads it
    return {name: Path(str(path)) for name, path in found.items()}


class LeanClipText:
    """A CLIP text tower and its tokenizer: texts -> projected features, as transformers computes
    them (`get_text_features`), in fp32."""

    def __init__(self, files: LeanTextFiles, device: Any) -> None:
        """ValueError when the weights are not a complete fp32 CLIP text tower."""
        import torch
        from safetensors import safe_open
        from tokenizers import Tokenizer

        text = {**TEXT_DEFAULTS, **(files.config.get("text_config") or {})}
        with safe_open(str(files.weights), framework="pt") as weights:
            names = [
                n for n in weights.keys() if n.startswith("text_model.") or n == "text_projection.weight"
            ]
            tensors = {name: weights.get_tensor(name) for name in names}
        if any(tensor.dtype != torch.float32 for tensor in tensors.values()):
            raise ValueError("the text weights are not float32")
        self._weights = {name: tensor.to(device) for name, tensor in tensors.items()}
        self.layers = sum(
            1 for n in names if n.startswith("text_model.encoder.layers.") and n.endswith(".mlp.fc1.weight")
        )
        missing = [name for name in self._required() if name not in self._weights]
        if missing or not self.layers:
            raise ValueError(f"the checkpoint has no complete CLIP text tower (missing {missing[:3]})")
        self.width = int(self._weights["text_model.embeddings.token_embedding.weight"].shape[1])
        self.heads = int(text["num_attention_heads"])
        self.activation = str(text["hidden_act"])
        self.eps = float(text["layer_norm_eps"])
        self.eos_token_id = int(text["eos_token_id"])
        self.positions = int(self._weights["text_model.embeddings.position_embedding.weight"].shape[0])
        self.device = device
        self.max_text_tokens = min(
            int(files.tokenizer_config.get("model_max_length") or self.positions), self.positions
        )
        self.tokenizer = Tokenizer.from_file(str(files.tokenizer))
        pad = files.tokenizer_config.get("pad_token") or files.tokenizer_config.get("eos_token")
        pad = pad.get("content") if isinstance(pad, dict) else pad
        pad_id = self.tokenizer.token_to_id(pad) if pad else None
        if pad_id is None:
            raise ValueError("the tokenizer has no padding token")
        self.tokenizer.enable_padding(direction="right", pad_id=pad_id, pad_token=pad)
        self.tokenizer.enable_truncation(self.max_text_tokens, direction="right")

    def _required(self) -> list[str]:
        names = [
            "text_model.embeddings.token_embedding.weight",
            "text_model.embeddings.position_embedding.weight",
            "text_model.final_layer_norm.weight",
            "text_model.final_layer_norm.bias",
            "text_projection.weight",
        ]
        parts = [f"self_attn.{name}_proj" for name in ("q", "k", "v", "out")]
        parts += ["layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2"]
        for layer in range(self.layers):
            names += [
                f"text_model.encoder.layers.{layer}.{part}.{kind}"
                for part in parts
                for kind in ("weight", "bias")
            ]
        return names

    def token_ids(self, texts: Sequence[str]) -> Any:
        """[B, L] int64 token ids, padded on the right to the longest text, truncated to the context."""
        import torch

        encoded = self.tokenizer.encode_batch(list(texts))
        return torch.tensor([item.ids for item in encoded], dtype=torch.long, device=self.device)

    def features(self, ids: Any) -> Any:
        """[B, projection] text features of token ids (before normalisation)."""
        import torch
        from torch.nn import functional

        w = self._weights
        batch, length = ids.shape
        hidden = w["text_model.embeddings.token_embedding.weight"][ids]
        hidden = hidden + w["text_model.embeddings.position_embedding.weight"][:length]
        head_width = self.width // self.heads
        for layer in range(self.layers):
            p = f"text_model.encoder.layers.{layer}."
            x = functional.layer_norm(
                hidden, (self.width,), w[p + "layer_norm1.weight"], w[p + "layer_norm1.bias"], self.eps
            )
            q, k, v = (
                functional.linear(x, w[f"{p}self_attn.{name}.weight"], w[f"{p}self_attn.{name}.bias"])
                .view(batch, length, self.heads, head_width)
                .transpose(1, 2)
                for name in ("q_proj", "k_proj", "v_proj")
            )
            # causal: the pooled (end-of-text) position never sees the padding after it
            attended = functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            attended = attended.transpose(1, 2).reshape(batch, length, self.width)
            hidden = hidden + functional.linear(
                attended, w[p + "self_attn.out_proj.weight"], w[p + "self_attn.out_proj.bias"]
            )
            x = functional.layer_norm(
                hidden, (self.width,), w[p + "layer_norm2.weight"], w[p + "layer_norm2.bias"], self.eps
            )
            x = _activate(
                functional.linear(x, w[p + "mlp.fc1.weight"], w[p + "mlp.fc1.bias"]), self.activation
            )
            hidden = hidden + functional.linear(x, w[p + "mlp.fc2.weight"], w[p + "mlp.fc2.bias"])
        hidden = functional.layer_norm(
            hidden,
            (self.width,),
            w["text_model.final_layer_norm.weight"],
            w["text_model.final_layer_norm.bias"],
            self.eps,
        )
        if self.eos_token_id == 2:  # configs from before transformers#24773: end of text is the highest id
            ends = ids.to(torch.int).argmax(dim=-1)
        else:
            ends = (ids == self.eos_token_id).to(torch.int).argmax(dim=-1)
        pooled = hidden[torch.arange(batch, device=hidden.device), ends]
        return functional.linear(pooled, w["text_projection.weight"])


def _activate(x: Any, name: str) -> Any:
    import torch
    from torch.nn import functional

    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return functional.gelu(x)
    if name == "gelu_pytorch_tanh":
        return functional.gelu(x, approximate="tanh")
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
