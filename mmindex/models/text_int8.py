"""An int8 text tower for answering text queries on a CPU.

One query is a forward pass over a handful of tokens, so the text tower's time goes into streaming
its weights through the matrix products, not into arithmetic: on a 2-core AMD EPYC the ViT-B/32
text tower takes 44-47 ms per query in fp32 and 17-18 ms with its linear layers in dynamic int8
(lowest cosine to fp32 0.997; `bench/search_latency.py`). A long-lived process that answers text queries
(the search server) can therefore run them through an int8 copy of the text tower, kept only if it
stays within MIN_COSINE of fp32 on the probe texts (the table's own captions, where it has them)
and its linear layers are large enough to gain (MIN_INT8_WEIGHTS). Size decides, not a timing at
start-up: a timed verdict flipped with the machine's load, so one server answered a query with other
scores than the next. The image tower and the stored embeddings are untouched.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from mmindex.models.execution import MIN_COSINE

# Weights in the text tower's linear layers from which int8 pays: ViT-B/32's 38M ran 2.6x faster per
# query in int8 (bench/search_latency.py); the toy CLIP's 0.1M ran at 0.82x (too small to be limited by
# streaming its weights). 4M fp32 weights are 16 MB, well past a core's L2 cache.
MIN_INT8_WEIGHTS = 4_000_000
TEXT_PARTS = ("text",)  # CLIP, SigLIP, Chinese-CLIP, AltCLIP: text_model.*, text_projection
IMAGE_PARTS = ("vision", "visual", "image")


def text_linear_layers(model: Any) -> dict[str, Any]:
    """The plain linear layers of `model` named as text-tower parts, by name."""
    import torch

    return {
        name: module
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear  # not subclasses: MultiheadAttention reads its out_proj directly
        and any(part in name for part in TEXT_PARTS)
        and not any(part in name for part in IMAGE_PARTS)
    }


def int8_text_copy(model: Any) -> Any | None:
    """A copy of `model` whose text-tower linear layers are dynamic int8; every other parameter is
    shared with `model`, not copied. None when the model has no linear layers named as text parts."""
    import torch

    names = set(text_linear_layers(model))
    if not names:
        return None
    shared = {id(tensor): tensor for tensor in [*model.parameters(), *model.buffers()]}
    duplicate = copy.deepcopy(model, memo=dict(shared))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in favour of torchao
        spec = dict.fromkeys(names, torch.ao.quantization.default_dynamic_qconfig)
        return torch.ao.quantization.quantize_dynamic(duplicate, spec, dtype=torch.qint8, inplace=True)


def int8_text_verdict(
    forward: Callable[[Any, Sequence[str]], Any], model: Any, candidate: Any, texts: Sequence[str]
) -> tuple[bool, str]:
    """Whether `candidate` (an int8 text copy) should answer text queries instead of `model`, and
    why: every probe text within MIN_COSINE of fp32 and finite, and the text tower's linear layers
    holding at least MIN_INT8_WEIGHTS weights."""
    import torch

    with torch.inference_mode():
        expected = forward(model, texts).float()
        got = forward(candidate, texts).float()
    if not torch.isfinite(got).all():
        return False, "int8 text embeddings are not finite"
    lowest = float(torch.nn.functional.cosine_similarity(got, expected, dim=-1).min())
    if lowest < MIN_COSINE:
        return False, f"int8 text embeddings drift (lowest cosine {lowest:.4f} < {MIN_COSINE})"
    weights = sum(layer.weight.numel() for layer in text_linear_layers(model).values())
    if weights < MIN_INT8_WEIGHTS:
        return False, f"text tower too small to gain from int8 ({weights / 1e6:.1f}M linear weights)"
    return True, f"int8 text tower ({weights / 1e6:.0f}M linear weights), lowest cosine to fp32 {lowest:.4f}"
