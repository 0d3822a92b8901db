"""An int8 text tower for answering text queries on a CPU.

One query is a forward pass over a handful of tokens, so the text tower's time goes into streaming
its weights through the matrix products, not into arithmetic: on a 2-core AMD EPYC the ViT-B/32
text tower takes 44-47 ms per query in fp32 and 17-18 ms with its linear layers in dynamic int8
(lowest cosine to fp32 0.997; `bench/search_latency.py`). A long-lived process that answers text queries
(the search server) can therefore run them through an int8 copy of the text tower, kept only if it
stays within MIN_COSINE of fp32 on the probe texts (the table's own captions, where it has them)
and is measurably faster. The image tower and the stored embeddings are untouched.
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from mmindex.models.execution import MIN_COSINE

MIN_SPEEDUP = 1.2  # an int8 tower has to pay for itself, or the fp32 one stays
TIMING_ROUNDS = 5
TEXT_PARTS = ("text",)  # CLIP, SigLIP, Chinese-CLIP, AltCLIP: text_model.*, text_projection
IMAGE_PARTS = ("vision", "visual", "image")


def int8_text_copy(model: Any) -> Any | None:
    """A copy of `model` whose text-tower linear layers are dynamic int8; every other parameter is
    shared with `model`, not copied. None when the model has no linear layers named as text parts."""
    import torch

    names = {
        name
        for name, module in model.named_modules()
        if type(module) is torch.nn.Linear  # not subclasses: MultiheadAttention reads its out_proj directly
        and any(part in name for part in TEXT_PARTS)
        and not any(part in name for part in IMAGE_PARTS)
    }
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
    why: every probe text within MIN_COSINE of fp32 and finite, and a one-query pass at least
    MIN_SPEEDUP faster (interleaved timings, median)."""
    import torch

    with torch.inference_mode():
        expected = forward(model, texts).float()
        got = forward(candidate, texts).float()
        if not torch.isfinite(got).all():
            return False, "int8 text embeddings are not finite"
        lowest = float(torch.nn.functional.cosine_similarity(got, expected, dim=-1).min())
        if lowest < MIN_COSINE:
            return False, f"int8 text embeddings drift (lowest cosine {lowest:.4f} < {MIN_COSINE})"
        times: dict[str, list[float]] = {"fp32": [], "int8": []}
        for round_ in range(TIMING_ROUNDS):
            query = [texts[round_ % len(texts)]]
            for name, tower in (("fp32", model), ("int8", candidate)):
                started = time.perf_counter()
                forward(tower, query)
                times[name].append(time.perf_counter() - started)
    speedup = statistics.median(times["fp32"]) / statistics.median(times["int8"])
    if speedup < MIN_SPEEDUP:
        return False, f"int8 text tower is not faster here ({speedup:.2f}x)"
    return True, f"int8 text tower: {speedup:.1f}x faster, lowest cosine to fp32 {lowest:.4f}"
