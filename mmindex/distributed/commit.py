"""The one commit point of a sharded run: the driver checks a group of shard results against the plan
and commits it, under an id that makes a retried commit a no-op.

Order, as in the local writer: rows of changed items that now fail for good are deleted, failure
records are replaced, changed items are upserted from their staging datasets, and last the new items'
staged fragments are appended in one transaction carrying `mmindex.commit = RUN/GROUP`. Every step but
the Append is idempotent, and the Append is looked up before it is made, so a commit retried after a
lost acknowledgement (or a rerun after a crash) never appends a group twice.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from mmindex.distributed.shards import Shard
from mmindex.distributed.worker import ShardResult, table_uri
from mmindex.errors import StoreError
from mmindex.ingest.reembed import REEMBED_STAGE, SAME_FINGERPRINT
from mmindex.schema import CAPTION_HUMAN, ITEM_STAGES, SEVERITY_ERROR
from mmindex.store.staging import drop_staging, staging_root
from mmindex.store.writer import TableWriter

log = logging.getLogger(__name__)

COMMIT_PROPERTY = "mmindex.commit"
CAPTION_STAGES = ("caption",)
NOT_HUMAN = f"target.caption_source IS NULL OR target.caption_source <> '{CAPTION_HUMAN}'"
COMMIT_ATTEMPTS = 3


class PlanMismatch(StoreError):
    """A shard result that does not account for exactly the items planned for it: never committed."""


@dataclass
class CommitOutcome:
    appended: int = 0
    upserted: int = 0
    failures: int = 0
    already_committed: bool = False
    seconds: float = 0.0


def check_group(group: Sequence[tuple[Shard, ShardResult]]) -> None:
    """One result per shard, each accounting for exactly its shard's ids, and no id in two shards."""
    seen_shards: set[str] = set()
    seen_ids: set[str] = set()
    for shard, result in group:
        if result.shard_id != shard.id or shard.id in seen_shards:
            raise PlanMismatch(f"shard {shard.id}: result for {result.shard_id}, or a second result")
        seen_shards.add(shard.id)
        done = result.done_ids
        if len(set(done)) != len(done) or set(done) != shard.ids:
            raise PlanMismatch(
                f"shard {shard.id}: the result covers {len(set(done))} ids ({len(done)} entries), "
                f"the plan {len(shard.ids)}"
            )
        if seen_ids & shard.ids:
            raise PlanMismatch(f"shard {shard.id} repeats ids of another shard in its group")
        seen_ids |= shard.ids


PARTIAL_UPDATES = {  # kind -> (the condition a matched row must meet, the failure stages replaced)
    "captions": (NOT_HUMAN, CAPTION_STAGES),
    "reembed": (SAME_FINGERPRINT, (REEMBED_STAGE,)),
}


class Committer:
    """Commits groups of shard results of one run into the table its writer holds. `partial` names
    results that are partial rows updating existing ones: "captions" (a caption backfill: never a
    human caption) or "reembed" (a generation's vectors: never a row changed since it was read); only
    earlier failures of that stage are replaced."""

    def __init__(self, writer: TableWriter, run_id: str, *, partial: str | None = None) -> None:
        if partial not in (None, *PARTIAL_UPDATES):
            raise ValueError(f"partial must be None or one of {', '.join(PARTIAL_UPDATES)}, not {partial!r}")
        self.writer = writer
        self.run_id = run_id
        self.partial = partial
        store = writer.store
        self.uri = table_uri(store.db_uri, store.table_name)
        self.storage_options = store.storage_options or None

    def commit(self, group: Sequence[tuple[Shard, ShardResult]], number: int) -> CommitOutcome:
        """Commit a group (retrying a failed attempt: the retry finds an Append that did land)."""
        check_group(group)
        commit_id = f"{self.run_id}/{number}"
        started = time.perf_counter()
        base_version = self._dataset().version
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                outcome = self._commit_once(group, commit_id, base_version if attempt > 1 else None)
                break
            except PlanMismatch:
                raise
            except Exception as exc:  # a lost acknowledgement looks like any I/O error: look, then retry
                if attempt == COMMIT_ATTEMPTS:
                    raise StoreError(f"commit {commit_id} failed {attempt} times: {exc}") from exc
                log.warning("commit %s attempt %d failed (%s); retrying", commit_id, attempt, exc)
                time.sleep(0.2 * attempt)
        outcome.seconds = time.perf_counter() - started
        self._drop_staging(group)
        return outcome

    def _commit_once(
        self, group: Sequence[tuple[Shard, ShardResult]], commit_id: str, since: int | None
    ) -> CommitOutcome:
        """One attempt; `since`: the version before the first attempt, after which an earlier
        attempt's Append may have landed unacknowledged."""
        import lance

        outcome = CommitOutcome()
        if since is not None and self._committed_since(since, commit_id):
            outcome.already_committed = True
            return outcome
        results = [result for _, result in group]
        failures = list({(f.id, f.stage): f for r in results for f in r.failures}.values())
        replaced = frozenset().union(*(shard.replaces for shard, _ in group))
        broken = [
            f.id
            for f in failures
            if f.id in replaced
            and f.stage in ITEM_STAGES
            and f.severity == SEVERITY_ERROR
            and not f.retryable
        ]
        if broken and not self.partial:
            self.writer.delete_rows(broken)
        done = [row_id for r in results for row_id in r.done_ids]
        stages = PARTIAL_UPDATES[self.partial][1] if self.partial else None
        self.writer.replace_failures(done, stages, failures)
        outcome.failures = len(failures)
        staged = [r.upsert_uri for r in results if r.upsert_uri]
        if staged:
            outcome.upserted = self._upsert(staged, commit_id)
        fragments = [
            lance.fragment.FragmentMetadata.from_json(json.dumps(f)) for r in results for f in r.fragments
        ]
        if fragments:
            dataset = self._dataset()
            transaction = lance.Transaction(
                dataset.version,
                lance.LanceOperation.Append(fragments),
                transaction_properties={COMMIT_PROPERTY: commit_id},
            )
            commit_transaction(self.uri, transaction, self.storage_options)
            outcome.appended = sum(r.appended for r in results)
        self.writer.wrote = True
        return outcome

    def _upsert(self, staged: list[str], commit_id: str) -> int:
        import lance

        datasets = [lance.dataset(uri, storage_options=self.storage_options) for uri in staged]
        schema = datasets[0].schema
        batches = (batch for dataset in datasets for batch in dataset.to_batches())
        reader = pa.RecordBatchReader.from_batches(schema, batches)
        builder = self._dataset().merge_insert("id")
        if self.partial:  # partial rows update existing ones, under the kind's condition
            builder = builder.when_matched_update_all(condition=PARTIAL_UPDATES[self.partial][0])
        else:
            builder = builder.when_matched_update_all().when_not_matched_insert_all()
        transaction, stats = builder.execute_uncommitted(reader)
        transaction.transaction_properties = {COMMIT_PROPERTY: commit_id + "/upsert"}
        commit_transaction(self.uri, transaction, self.storage_options)
        return int(stats.get("num_updated_rows", 0)) + int(stats.get("num_inserted_rows", 0))

    def _dataset(self) -> Any:
        import lance

        return lance.dataset(self.uri, storage_options=self.storage_options)

    def _committed_since(self, version: int, commit_id: str) -> bool:
        """True when a transaction after `version` carries `commit_id` (this run holds the write
        lock, so only its own commits can be there)."""
        dataset = self._dataset()
        for newer in range(dataset.version, version, -1):
            try:
                transaction = dataset.read_transaction(newer)
            except TypeError:  # pylance cannot rebuild some index operations; those are not ours
                continue
            properties = getattr(transaction, "transaction_properties", None) or {}
            if properties.get(COMMIT_PROPERTY) == commit_id:
                return True
        return False

    def _drop_staging(self, group: Sequence[tuple[Shard, ShardResult]]) -> None:
        for _, result in group:
            if result.upsert_uri:
                drop_staging(result.upsert_uri, self.storage_options)

    def close(self) -> None:
        """Remove the run's staging folder."""
        store = self.writer.store
        drop_staging(
            staging_root(store.db_uri, store.table_name, self.run_id),
            self.storage_options,
        )


def commit_transaction(uri: str, transaction: Any, storage_options: dict[str, str] | None) -> Any:
    """Commit one Lance transaction (a seam the tests use to lose an acknowledgement)."""
    import lance

    return lance.LanceDataset.commit(
        uri, transaction, read_version=transaction.read_version, storage_options=storage_options
    )
