"""Task versions of the indexing and captioning steps (see mmindex.ingest.steps and .backfill)."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from mmindex.ingest import backfill, pipeline
from mmindex.ingest import steps as batches

# Stage tasks take batches and open tables: never cached, never persisted. Only I/O retries.
load_batch = task(
    name="load", retries=2, retry_delay_seconds=[2.0, 10.0], cache_policy=NO_CACHE, persist_result=False
)(batches.load_batch)
caption_batch = task(name="caption", cache_policy=NO_CACHE, persist_result=False)(batches.caption_batch)
embed_batch = task(name="embed", cache_policy=NO_CACHE, persist_result=False)(batches.embed_batch)
write_batch = task(
    name="write", retries=3, retry_delay_seconds=[1.0, 5.0, 20.0], cache_policy=NO_CACHE, persist_result=False
)(pipeline.write_batch)
embed_caption_rows = task(name="embed-captions", cache_policy=NO_CACHE, persist_result=False)(
    backfill.embed_caption_rows
)
write_caption_rows = task(
    name="write-captions",
    retries=3,
    retry_delay_seconds=[1.0, 5.0, 20.0],
    cache_policy=NO_CACHE,
    persist_result=False,
)(backfill.write_caption_rows)

INDEX_STEPS = pipeline.Steps(load=load_batch, caption=caption_batch, embed=embed_batch, write=write_batch)
CAPTION_STEPS = backfill.CaptionSteps(
    load=load_batch, caption=caption_batch, embed=embed_caption_rows, write=write_caption_rows
)
