"""Model loading as tasks: visible in the Prefect UI, never cached (models are not serialisable)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from mmindex.models.captioner import Captioner, GenerationSettings
from mmindex.models.clip import ClipEmbedder


@task(name="load-embedder", cache_policy=NO_CACHE, persist_result=False)
def load_embedder(
    model: str, device: str, precision: str = "auto", quantize: str | None = None
) -> ClipEmbedder:
    return ClipEmbedder.load(model, device=device, precision=precision, quantize=quantize)


@task(name="load-captioner", cache_policy=NO_CACHE, persist_result=False)
def load_captioner(model: str, device: str, precision: str, settings: GenerationSettings) -> Captioner:
    return Captioner.load(model, device=device, precision=precision, settings=settings)
