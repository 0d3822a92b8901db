"""Where shards run: `InProcessEngine` (this process; the `sharded` runner, and what the tests use to
exercise the commit logic without a cluster) or `RayEngine` (mmindex.distributed.ray_engine).

An engine starts its workers (each loads the models once), then maps shards to results, retrying a
shard whose attempt failed up to `max_attempts` times and yielding exactly one result per shard.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import Protocol

from mmindex.distributed.shards import Shard
from mmindex.distributed.worker import ModelInfo, ShardFailed, ShardResult, ShardWorker, worker_class
from mmindex.errors import ConfigError
from mmindex.jobs.spec import CaptionJob, IndexJob, ReembedJob

log = logging.getLogger(__name__)


class Engine(Protocol):
    def start(self) -> ModelInfo:
        """Start the workers (they load the models) and say which model they run."""
        ...

    def map(self, shards: Iterable[Shard]) -> Iterator[tuple[Shard, ShardResult]]:
        """One result per shard, in completion order."""
        ...

    def close(self) -> None: ...


class InProcessEngine:
    """Runs shards one after another in this process, with the same worker code as a cluster."""

    def __init__(self, job: IndexJob | CaptionJob | ReembedJob, run_id: str, max_attempts: int = 3) -> None:
        self.job, self.run_id, self.max_attempts = job, run_id, max_attempts
        self.worker: ShardWorker | None = None

    def start(self) -> ModelInfo:
        self.worker = worker_class(self.job)(self.job, self.run_id)  # type: ignore[arg-type]
        return self.worker.info()

    def map(self, shards: Iterable[Shard]) -> Iterator[tuple[Shard, ShardResult]]:
        assert self.worker is not None, "start() first"
        for shard in shards:
            for attempt in range(1, self.max_attempts + 1):
                try:
                    result = self.worker.run(shard)
                    break
                except Exception as exc:  # infrastructure (storage down, out of memory): retried, bounded
                    if attempt == self.max_attempts:
                        raise ShardFailed(f"shard {shard.id} failed {attempt} times: {exc}") from exc
                    log.warning("shard %s attempt %d failed: %s", shard.id, attempt, exc)
            yield shard, result

    def close(self) -> None:
        self.worker = None


def engine_for(job: IndexJob | CaptionJob | ReembedJob, run_id: str) -> Engine:
    """The engine `job.runner` names (local runs never get here: they stream through the pipeline)."""
    if job.runner == "sharded":
        return InProcessEngine(job, run_id, job.max_attempts)
    if job.runner == "ray":
        from mmindex.distributed.ray_engine import RayEngine

        return RayEngine(job, run_id)
    raise ConfigError(f"--runner {job.runner!r}: choose local, sharded or ray")
