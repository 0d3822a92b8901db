"""Indexing on a distributed engine: plan on the driver, work on the workers, one commit point.

The driver lists the source and compares it with the table (as a local run does), cuts the work into
shards with stable ids (`shards`), and hands them to an engine (`engines`: in this process, or Ray
actors that load the models once). A worker loads, captions and embeds a shard and stages its rows as
Lance data next to the table (`worker`), never touching the table's manifest. The driver keeps one
result per shard and commits groups of shards, each under a run id that makes a retried commit a
no-op (`commit`). `driver.run_sharded` ties them together.
"""
