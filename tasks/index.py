"""Task versions of the indexing stages (see mmindex.pipeline)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from mmindex import pipeline
from mmindex.jobs import PreparedIndex

load_batch = task(
    pipeline.load_batch,
    name="load",
    retries=2,
    retry_delay_seconds=[2, 10],
    cache_policy=NO_CACHE,
    persist_result=False,
)
embed_batch = task(pipeline.embed_batch, name="embed", cache_policy=NO_CACHE, persist_result=False)
write_batch = task(
    pipeline.write_batch,
    name="write",
    retries=3,
    retry_delay_seconds=[1, 5, 20],
    cache_policy=NO_CACHE,
    persist_result=False,
)


@task(name="load-model", cache_policy=NO_CACHE, persist_result=False)
def load_embedder(prepared: PreparedIndex) -> pipeline.Embedder:
    return prepared.load_embedder()


STAGES = pipeline.Stages(load=load_batch, embed=embed_batch, write=write_batch)
