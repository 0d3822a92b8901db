"""Model loading and table upkeep as tasks: visible in the Prefect UI, never cached (models and open
tables are not serialisable)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from mmindex.models import choice
from mmindex.store import upkeep

load_embedder = task(name="load-embedder", cache_policy=NO_CACHE, persist_result=False)(choice.load_embedder)
load_captioner = task(name="load-captioner", cache_policy=NO_CACHE, persist_result=False)(
    choice.load_captioner
)
maintain_table = task(
    name="maintain-table", retries=1, retry_delay_seconds=30.0, cache_policy=NO_CACHE, persist_result=False
)(upkeep.maintain)
