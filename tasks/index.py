"""Task versions of the indexing stages (see mmindex.pipeline)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from mmindex import pipeline
from mmindex.jobs import PreparedIndex

load_batch = task(
    name="load", retries=2, retry_delay_seconds=[2.0, 10.0], cache_policy=NO_CACHE, persist_result=False
)(pipeline.load_batch)
embed_batch = task(name="embed", cache_policy=NO_CACHE, persist_result=False)(pipeline.embed_batch)
write_batch = task(
    name="write", retries=3, retry_delay_seconds=[1.0, 5.0, 20.0], cache_policy=NO_CACHE, persist_result=False
)(pipeline.write_batch)


@task(name="load-model", cache_policy=NO_CACHE, persist_result=False)
def load_embedder(prepared: PreparedIndex) -> pipeline.Embedder:
    return prepared.load_embedder()


STAGES = pipeline.Stages(load=load_batch, embed=embed_batch, write=write_batch)
