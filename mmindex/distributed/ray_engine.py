"""Shards on a Ray cluster: a pool of actors, each holding the models (loaded once per actor, with
`num_gpus` when the job runs on CUDA), fed at most two shards at a time. A shard whose actor died or
whose attempt raised is retried on another actor, up to the job's `max_attempts`; a dead actor is
replaced. The driver (this process) still plans and commits; actors never touch the table's manifest.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import Any

from mmindex.distributed.shards import Shard
from mmindex.distributed.worker import ModelInfo, ShardFailed, ShardResult, worker_class
from mmindex.errors import ConfigError
from mmindex.jobs.spec import CaptionJob, IndexJob, ReembedJob
from mmindex.models.precision import CPU_KIND_ENV, cpu_kind, native_bf16

log = logging.getLogger(__name__)

RAY_ADDRESS_ENV = "MMINDEX_RAY_ADDRESS"
SHARDS_PER_ACTOR = 2  # one running, one queued: the next shard is there when an actor finishes
SHIPPED_ENV = ("MMINDEX_", "AWS_")  # settings and S3 credentials the workers resolve like the driver


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError('--runner ray needs Ray: pip install "mmindex[ray]"') from exc
    return ray


def mode_notes(infos: list[ModelInfo], followed_kind: str) -> list[str]:
    """What the report must say when the workers did not all embed alike, or some followed a CPU
    kind that is not their own (bf16 emulated there: same vectors, slower)."""
    notes = []
    modes = sorted({info.embed_mode for info in infos})
    if len(modes) > 1:
        notes.append(
            f"the workers embedded in different modes ({', '.join(modes)}): some ran on another device; "
            "pass --device and --precision to make them agree"
        )
    emulating = sorted({i.cpu_kind for i in infos if "bf16" in i.embed_mode and not native_bf16(i.cpu_kind)})
    if emulating and "on cpu" in " ".join(modes):
        notes.append(
            f"workers on {', '.join(emulating)} CPUs embedded in the driver's mode ({followed_kind}: bf16), "
            "which they emulate slowly; set MMINDEX_CPU_KIND or --precision fp32 for a faster, different mode"
        )
    return notes


# Ray starts its workers at nice 15: on a machine busy with anything else they then barely run (a
# test suite under a CPU hog waited minutes per worker start). A cluster mmindex starts itself runs
# them at the driver's own priority; a cluster you start is yours to configure.
WORKER_NICENESS_ENV = "RAY_worker_niceness"


class RayEngine:
    def __init__(self, job: IndexJob | CaptionJob | ReembedJob, run_id: str) -> None:
        self.ray = import_ray()
        self.job, self.run_id = job, run_id
        self.address = job.ray_address or os.environ.get(RAY_ADDRESS_ENV) or None
        self.actors: list[Any] = []
        self._started_ray = False
        self._actor_class: Any = None

    def start(self) -> ModelInfo:
        ray = self.ray
        if not ray.is_initialized():
            if self.address is None:  # a cluster of our own, on this machine
                os.environ.setdefault(WORKER_NICENESS_ENV, "0")
            try:
                with warnings.catch_warnings():  # Ray forks its helpers before any table is open
                    warnings.filterwarnings("ignore", message=".*fork", category=RuntimeWarning)
                    ray.init(address=self.address, include_dashboard=False, logging_level="warning")
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise ConfigError(f"cannot reach the Ray cluster at {self.address}: {exc}") from exc
            self._started_ray = True
        gpus = self._gpus_per_actor()
        env = {k: v for k, v in os.environ.items() if k.startswith(SHIPPED_ENV) and k != RAY_ADDRESS_ENV}
        env.setdefault(CPU_KIND_ENV, cpu_kind())  # workers on CPUs choose `auto` modes as the driver would
        self._actor_class = ray.remote(worker_class(self.job)).options(
            num_cpus=getattr(self.job, "workers", None) or 1,
            num_gpus=gpus,
            max_restarts=0,
            max_task_retries=0,
            runtime_env={"env_vars": env} if env else None,
        )
        self.actors = [self._new_actor() for _ in range(self._actor_count(gpus))]
        infos = ray.get([actor.info.remote() for actor in self.actors])  # a worker's ModelError surfaces here
        info: ModelInfo = replace(infos[0], notes=mode_notes(infos, env[CPU_KIND_ENV]))
        return info

    def _gpus_per_actor(self) -> float:
        cluster_gpus = self.ray.cluster_resources().get("GPU", 0)
        wants_gpu = (self.job.device or "auto") in ("auto", "cuda") or str(self.job.device).startswith("cuda")
        return 1.0 if cluster_gpus and wants_gpu else 0.0

    def _actor_count(self, gpus: float) -> int:
        if self.job.ray_workers:
            return self.job.ray_workers
        if gpus:
            return max(1, int(self.ray.cluster_resources().get("GPU", 1)))
        return 1

    def _new_actor(self) -> Any:
        return self._actor_class.remote(self.job, self.run_id)

    def map(self, shards: Iterable[Shard]) -> Iterator[tuple[Shard, ShardResult]]:
        ray = self.ray
        pending = iter(shards)
        retries: deque[tuple[Shard, int, Any]] = deque()  # (shard, attempt, actor to avoid)
        load = {id(actor): 0 for actor in self.actors}
        inflight: dict[Any, tuple[Shard, int, Any]] = {}
        exhausted = False
        while True:
            while True:
                actor = min(self.actors, key=lambda a: load[id(a)])
                if load[id(actor)] >= SHARDS_PER_ACTOR:
                    break
                task = retries.popleft() if retries else None
                if task is None:
                    fresh = None if exhausted else next(pending, None)
                    if fresh is None:
                        exhausted = True
                        break
                    task = (fresh, 1, None)
                shard, attempt, avoid = task
                if avoid is actor and len(self.actors) > 1:
                    actor = min((a for a in self.actors if a is not avoid), key=lambda a: load[id(a)])
                inflight[actor.run.remote(shard)] = (shard, attempt, actor)
                load[id(actor)] += 1
            if not inflight:
                return
            ready, _ = ray.wait(list(inflight), num_returns=1)
            shard, attempt, actor = inflight.pop(ready[0])
            load[id(actor)] -= 1
            try:
                result: ShardResult = ray.get(ready[0])
            except ray.exceptions.RayActorError as exc:
                self._replace(actor, load)
                self._retry(retries, shard, attempt, actor, f"its worker died ({type(exc).__name__})")
            except ray.exceptions.RayTaskError as exc:
                self._retry(retries, shard, attempt, actor, str(exc).splitlines()[-1])
            else:
                yield shard, result

    def _retry(
        self, retries: deque[tuple[Shard, int, Any]], shard: Shard, attempt: int, actor: Any, why: str
    ) -> None:
        if attempt >= self.job.max_attempts:
            raise ShardFailed(f"shard {shard.id} failed {attempt} times; last: {why}")
        log.warning("shard %s attempt %d failed: %s; retrying on another worker", shard.id, attempt, why)
        retries.append((shard, attempt + 1, actor))

    def _replace(self, dead: Any, load: dict[int, int]) -> None:
        """Swap a dead actor for a new one; shards still queued on the dead actor fail and are retried."""
        index = next((i for i, actor in enumerate(self.actors) if actor is dead), None)
        if index is None:  # already replaced (another of its shards failed first)
            return
        fresh = self._new_actor()
        self.actors[index] = fresh
        load[id(fresh)] = 0

    def close(self) -> None:
        for actor in self.actors:
            try:
                self.ray.kill(actor)
            except Exception as exc:  # already gone
                log.debug("actor not killed: %s", exc)
        self.actors = []
        if self._started_ray:
            self.ray.shutdown()
