"""Which models a run loads, on which device, and loading them where the run executes (this process,
a Prefect task, a shard worker)."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmindex.errors import ModelError
from mmindex.models.captioner import Captioner, GenerationSettings
from mmindex.models.clip import ClipEmbedder
from mmindex.models.precision import check_precision


@dataclass
class ModelChoice:
    """Which models a run loads, on which device; loading happens where the run executes."""

    embed_model: str
    device: str
    precision: str = "auto"
    quantize: str | None = None
    caption_model: str | None = None
    generation: GenerationSettings = field(default_factory=GenerationSettings)

    def __post_init__(self) -> None:
        check_precision(self.precision, self.quantize)


def load_embedder(models: ModelChoice) -> ClipEmbedder:
    return ClipEmbedder.load(
        models.embed_model, device=models.device, precision=models.precision, quantize=models.quantize
    )


def load_captioner(models: ModelChoice) -> Captioner:
    if models.caption_model is None:
        raise ModelError("no captioning model chosen")
    return Captioner.load(
        models.caption_model, device=models.device, precision=models.precision, settings=models.generation
    )
