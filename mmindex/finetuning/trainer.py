"""The fine-tuning loop: evaluate the base model, train epoch by epoch on streamed pairs, keep the
epoch with the best held-out recall, optionally interpolate it with the base (WiSE-FT), and save a
model directory that `from_pretrained` and `mmindex index --model DIR` load.

After every epoch the full training state (weights, optimiser, schedule, figures so far) is written
atomically to `OUT/.checkpoint/`, so a killed run started again with the same options continues
from the last finished epoch.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mmindex.errors import ConfigError, ModelError
from mmindex.finetuning.data import (
    HOLDOUT,
    TRAIN,
    Pair,
    PairQuery,
    PixelBatch,
    Split,
    batched,
    load_pairs,
    shuffled,
)
from mmindex.finetuning.metrics import first_hit_ranks, retrieval_metrics, unique_captions
from mmindex.finetuning.objective import (
    TrainPart,
    interpolate,
    plain_state,
    select_trainable,
    trainable_count,
)
from mmindex.finetuning.report import EpochRecord, FinetuneReport
from mmindex.finetuning.step import TrainingStep
from mmindex.ingest.pipeline import overlapped
from mmindex.ingest.steps import Reader
from mmindex.models.clip import ClipEmbedder, load_parts
from mmindex.models.execution import autocast_mode
from mmindex.models.precision import autocast_dtype, compute_label
from mmindex.models.resolve import ModelRef, pick_device, quiet_transformers
from mmindex.report import ProgressUpdate, RunReport

CHECKPOINT = ".checkpoint"
EVAL_CACHE_BYTES = 256 << 20  # held-out pixels kept in memory between evaluations, at most
Progress = Callable[[ProgressUpdate], None]


WISE_RECALL_AT = 5  # a held-out query is "answered" when a right image is in the top 5
WISE_TOLERANCE = 0.02  # --wise-alpha auto keeps the recall of the base's answered queries this close


@dataclass
class FinetuneSettings:
    """Hyperparameters and where the result goes (see FinetuneJob for each one's reason)."""

    out: Path
    epochs: int = 5
    lr: float | None = None
    batch_size: int = 64
    part: TrainPart = TrainPart("full")
    weight_decay: float = 0.1
    warmup: float = 0.1  # share of the steps spent warming the learning rate up from zero
    wise_alpha: float | str | None = None  # a number, or "auto" (`_choose_alpha`)
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    eval_pairs: int = 5000
    shuffle_buffer: int = 10_000
    workers: int = 1

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else self.part.default_lr

    def fingerprint(self, table: str, base: str, split: Split, query: PairQuery) -> dict[str, Any]:
        """What a checkpoint must match to be resumed: everything that changes the training."""
        return {
            "table": table,
            "base": base,
            "epochs": self.epochs,
            "lr": self.learning_rate,
            "batch_size": self.batch_size,
            "part": str(self.part),
            "weight_decay": self.weight_decay,
            "warmup": self.warmup,
            "seed": self.seed,
            "holdout": split.holdout,
            "where": query.where,
            "include_generated": query.include_generated,
        }


@dataclass
class EvalSet:
    """Pairs to score retrieval on: the held-out split, or a control set from a manifest."""

    name: str
    pairs: Callable[[], Iterator[Pair]]
    reader: Reader


class Finetune:
    """One fine-tune run (see the module docstring)."""

    def __init__(
        self,
        ref: ModelRef,
        query: PairQuery,
        split: Split,
        settings: FinetuneSettings,
        reader: Reader,
        *,
        counts: dict[str, int],
        control: EvalSet | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.ref, self.query, self.split, self.settings = ref, query, split, settings
        self.reader, self.counts, self.progress = reader, counts, progress
        self.sets = [EvalSet(HOLDOUT, lambda: query.pairs(split, HOLDOUT), reader)]
        if control is not None:
            self.sets.append(control)
        self.report = FinetuneReport(
            table=query.store.table_name,
            base_model=ref.name,
            out=str(settings.out),
            train_part=str(settings.part),
            rows={TRAIN: counts[TRAIN], HOLDOUT: counts[HOLDOUT]},
        )
        self.items = RunReport(kind="finetune")  # per-image read and decode failures
        self._eval_cache: dict[str, list[PixelBatch] | None] = {}
        self._failed: set[str] = set()

    def run(self) -> FinetuneReport:
        started = time.perf_counter()
        import torch

        quiet_transformers()
        settings = self.settings
        torch.manual_seed(settings.seed)
        device = pick_device(settings.device)
        model, tokenizer, image_processor = _load(self.ref)
        model.to(device)
        base_state = plain_state(model)
        trainable = select_trainable(model, settings.part)
        model.to(device)  # LoRA adapters are created on the CPU
        self.report.trainable_parameters = trainable_count(model)
        self.report.hyperparameters = self._hyperparameters()
        autocast = autocast_dtype(device, settings.precision)
        self.report.models = compute_label(self.ref.name, device, autocast)
        embedder = ClipEmbedder(
            model, tokenizer, image_processor, self.ref, device, mode=autocast_mode(autocast)
        )
        if not trainable:
            raise ConfigError(f"--train-part {settings.part} leaves nothing to train in {self.ref.name}")

        steps_per_epoch = max(1, math.ceil(self.counts[TRAIN] / settings.batch_size))
        step = TrainingStep(
            model,
            tokenizer,
            lr=settings.learning_rate,
            weight_decay=settings.weight_decay,
            total_steps=steps_per_epoch * settings.epochs,
            warmup=settings.warmup,
            autocast=autocast,
            max_text_tokens=embedder.max_text_tokens,
            preprocess=embedder.preprocess,
        )
        fingerprint = settings.fingerprint(self.report.table, self.ref.name, self.split, self.query)
        checkpoint = settings.out / CHECKPOINT
        state = _resume(checkpoint, fingerprint)
        best_state: dict[str, Any] | None = None
        if state is not None:
            model.load_state_dict(state["model"])
            step.load_state_dict(state["step"])
            self.report.metrics = state["metrics"]
            self.report.history = [EpochRecord(**record) for record in state["history"]]
            self.report.best_epoch = state["best_epoch"]
            self.report.resumed_from_epoch = len(self.report.history)
            if self.report.best_epoch:
                best_state = _saved_weights(settings.out)
        else:
            self.report.metrics["base"] = self._evaluate(embedder)

        best = max((r.holdout_mean_recall for r in self.report.history), default=-1.0)
        done_pairs = sum(r.pairs for r in self.report.history)
        planned = self.counts[TRAIN] * settings.epochs
        for epoch in range(len(self.report.history) + 1, settings.epochs + 1):
            record = self._train_epoch(epoch, step, embedder, done_pairs, planned)
            done_pairs += record.pairs
            holdout = self._evaluate(embedder, only=HOLDOUT)[HOLDOUT]
            record.holdout_mean_recall = holdout.get("mean_recall", 0.0)
            self.report.history.append(record)
            if record.holdout_mean_recall > best:
                best, self.report.best_epoch = record.holdout_mean_recall, epoch
                best_state = plain_state(model)
                self.report.metrics["finetuned"] = {HOLDOUT: holdout}
                _save_model(model, best_state, tokenizer, image_processor, settings.out)
            _write_checkpoint(checkpoint, fingerprint, model, step, self.report)

        if best_state is None:
            raise ModelError("no epoch finished: there was nothing to train on")
        self._finish(model, embedder, base_state, best_state, tokenizer, image_processor)
        shutil.rmtree(checkpoint, ignore_errors=True)
        self.report.seconds = time.perf_counter() - started
        self._copy_failures()
        return self.report

    def _finish(
        self,
        model: Any,
        embedder: ClipEmbedder,
        base_state: dict[str, Any],
        best_state: dict[str, Any],
        tokenizer: Any,
        image_processor: Any,
    ) -> None:
        """Score the chosen weights on every set, then WiSE-FT if asked; save what the report says."""
        _load_plain(model, best_state)
        self.report.metrics["finetuned"] = self._evaluate(embedder)
        base_recall = self.report.metrics["base"][HOLDOUT].get("mean_recall", 0.0)
        tuned_recall = self.report.metrics["finetuned"][HOLDOUT].get("mean_recall", 0.0)
        if tuned_recall <= base_recall:
            self.report.notes.append(
                f"no epoch beat the base model on held-out recall ({tuned_recall:.3f} vs {base_recall:.3f}); "
                "try another --lr, --train-part or more epochs, or keep the base model"
            )
        saved_state = best_state
        alpha = self.settings.wise_alpha
        if alpha == "auto":
            alpha = self._choose_alpha(model, embedder, base_state, best_state)
            self.report.hyperparameters["wise_alpha_chosen"] = alpha
        if isinstance(alpha, float):
            saved_state = interpolate(base_state, best_state, alpha)
            _load_plain(model, saved_state)
            self.report.metrics["wise"] = self._evaluate(embedder)
            self.report.saved = "wise"
        _save_model(model, saved_state, tokenizer, image_processor, self.settings.out)

    def _choose_alpha(
        self, model: Any, embedder: ClipEmbedder, base_state: dict[str, Any], best_state: dict[str, Any]
    ) -> float:
        """The largest WiSE-FT alpha (of 0, 0.1, ..., 1) that keeps held-out text->image recall@5, on
        the queries the base model answers (a right image in its top 5), within WISE_TOLERANCE of the
        base; every alpha's recall on those and on the others goes into the report (the frontier)."""
        _load_plain(model, base_state)
        known = self._holdout_ranks(embedder) <= WISE_RECALL_AT
        frontier = []
        for step in range(11):
            alpha = step / 10
            _load_plain(model, interpolate(base_state, best_state, alpha))
            right = self._holdout_ranks(embedder) <= WISE_RECALL_AT
            frontier.append(
                {
                    "alpha": alpha,
                    "known": float(right[known].mean()) if known.any() else float("nan"),
                    "new": float(right[~known].mean()) if (~known).any() else float("nan"),
                    "all": float(right.mean()) if len(right) else float("nan"),
                }
            )
        kept = [row for row in frontier if not known.any() or row["known"] >= 1.0 - WISE_TOLERANCE]
        chosen = max(kept, key=lambda row: row["alpha"])
        self.report.wise_frontier = frontier
        self.report.notes.append(
            f"--wise-alpha auto chose {chosen['alpha']:.1f}: held-out recall@{WISE_RECALL_AT} of the "
            f"{int(known.sum())} queries the base answered {chosen['known']:.2f} (kept within "
            f"{WISE_TOLERANCE}), of the {int((~known).sum())} others "
            f"{frontier[0]['new']:.2f} -> {chosen['new']:.2f}"
        )
        return float(chosen["alpha"])

    def _holdout_ranks(self, embedder: ClipEmbedder) -> np.ndarray:
        """For each distinct held-out caption, the rank of its first right image (text -> image)."""
        holdout = next(eval_set for eval_set in self.sets if eval_set.name == HOLDOUT)
        embedded = self._embedded(embedder, holdout)
        if embedded is None:
            return np.zeros(0, dtype=np.int64)
        image_vectors, index, text_vectors = embedded
        positives = index[None, :] == np.arange(len(text_vectors))[:, None]
        return first_hit_ranks(text_vectors @ image_vectors.T, positives)

    def _train_epoch(
        self, epoch: int, step: TrainingStep, embedder: ClipEmbedder, done_before: int, planned: int
    ) -> EpochRecord:
        settings = self.settings
        rng = random.Random(f"{settings.seed}:{epoch}")
        batches = batched(
            shuffled(self.query.pairs(self.split, TRAIN), settings.shuffle_buffer, rng), settings.batch_size
        )
        step.model.train()
        started = time.perf_counter()
        losses: list[float] = []
        pairs = 0
        with _pool(settings.workers) as pool:

            def load(batch: list[Pair]) -> PixelBatch:
                return load_pairs(self.reader, batch, embedder.preprocess, self.items, pool, self._failed)

            for _, loaded in overlapped(batches, load):
                if len(loaded) < 2:  # a contrastive loss needs another pair to contrast with
                    continue
                losses.append(step(loaded.pixels, loaded.captions))
                pairs += len(loaded)
                if self.progress is not None:
                    note = f"epoch {epoch}/{settings.epochs} loss {np.mean(losses[-20:]):.3f}"
                    done = done_before + pairs
                    self.progress(ProgressUpdate(done, planned, done, True, note))
        step.model.eval()
        seconds = time.perf_counter() - started
        self.report.train_seconds += seconds
        self.report.pairs_trained += pairs
        return EpochRecord(epoch, float(np.mean(losses)) if losses else float("nan"), pairs, seconds, 0.0)

    def _evaluate(self, embedder: ClipEmbedder, only: str | None = None) -> dict[str, dict[str, float]]:
        """Retrieval figures of the model as it is now, on each evaluation set (or only one)."""
        embedder.model.eval()
        results = {}
        for eval_set in self.sets:
            if only is None or eval_set.name == only:
                results[eval_set.name] = self._score(embedder, eval_set)
        return results

    def _score(self, embedder: ClipEmbedder, eval_set: EvalSet) -> dict[str, float]:
        embedded = self._embedded(embedder, eval_set)
        return {} if embedded is None else retrieval_metrics(*embedded)

    def _embedded(
        self, embedder: ClipEmbedder, eval_set: EvalSet
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """An evaluation set's image vectors, each image's caption index, and the vectors of the
        distinct captions; None for an empty set."""
        embedder.model.eval()
        vectors, captions = [], []
        for batch in self._eval_batches(embedder, eval_set):
            if len(batch):
                vectors.append(embedder.embed_pixels(batch.pixels))
                captions += batch.captions
        if not captions:
            return None
        texts, index = unique_captions(captions)
        text_vectors = np.concatenate(
            [embedder.embed_texts(texts[i : i + 256]) for i in range(0, len(texts), 256)]
        )
        return np.concatenate(vectors), index, text_vectors

    def _eval_batches(self, embedder: ClipEmbedder, eval_set: EvalSet) -> Iterator[PixelBatch]:
        """The set's first `eval_pairs` pairs, loaded; kept in memory if they fit EVAL_CACHE_BYTES."""
        cached = self._eval_cache.get(eval_set.name)
        if cached is not None:
            yield from cached
            return
        kept: list[PixelBatch] | None = []
        size = 0
        pairs = _take(eval_set.pairs(), self.settings.eval_pairs)
        with _pool(self.settings.workers) as pool:
            for batch in batched(pairs, 256):
                loaded = load_pairs(
                    eval_set.reader, batch, embedder.preprocess, self.items, pool, self._failed
                )
                size += loaded.pixels.nbytes
                if kept is not None:
                    kept = kept + [loaded] if size <= EVAL_CACHE_BYTES else None
                yield loaded
        self._eval_cache[eval_set.name] = kept

    def _hyperparameters(self) -> dict[str, Any]:
        settings = self.settings
        return {
            "epochs": settings.epochs,
            "learning_rate": settings.learning_rate,
            "batch_size": settings.batch_size,
            "train_part": str(settings.part),
            "weight_decay": settings.weight_decay,
            "warmup": settings.warmup,
            "schedule": "linear warm-up, then cosine decay to zero",
            "optimiser": "AdamW (betas 0.9, 0.98; eps 1e-6), gradient norm clipped at 1",
            "logit_scale": "clamped at ln(100), as CLIP's training does",
            "loss": "symmetric InfoNCE; identical captions in a batch are all positives",
            "holdout": self.split.holdout,
            "seed": settings.seed,
            "where": self.query.where,
            "include_generated": self.query.include_generated,
            "wise_alpha": settings.wise_alpha,
            "eval_pairs": settings.eval_pairs,
        }

    def _copy_failures(self) -> None:
        self.report.failed = self.items.failed
        self.report.failures_by_stage = dict(self.items.failures_by_stage)
        self.report.failure_examples = self.items.failure_examples[:50]


def _load(ref: ModelRef) -> tuple[Any, Any, Any]:
    model, tokenizer, processor = load_parts(ref)
    if getattr(model, "logit_scale", None) is None:
        raise ConfigError(f"{ref.name} ({type(model).__name__}) has no learned temperature to train with")
    return model, tokenizer, processor


def _take(pairs: Iterator[Pair], count: int) -> Iterator[Pair]:
    for index, pair in enumerate(pairs):
        if index >= count:
            return
        yield pair


@contextlib.contextmanager
def _pool(workers: int) -> Iterator[ThreadPoolExecutor | None]:
    if workers <= 1:
        yield None
        return
    with ThreadPoolExecutor(workers, "mmindex-finetune-load") as pool:
        yield pool


def _load_plain(model: Any, state: dict[str, Any]) -> None:
    """Load plain weights into a model that may carry LoRA parametrizations (their deltas are zeroed)."""
    import torch
    from torch.nn.utils import parametrize

    with torch.no_grad():
        for name, module in model.named_modules():
            if parametrize.is_parametrized(module):
                for attribute, chain in module.parametrizations.items():
                    chain.original.copy_(state[f"{name}.{attribute}"])
                    for delta in chain:
                        delta.lora_b.zero_()
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def _save_model(model: Any, state: dict[str, Any], tokenizer: Any, image_processor: Any, out: Path) -> None:
    """A directory `from_pretrained` loads: config, weights, tokenizer and image processor."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, state_dict=state)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)


def _saved_weights(out: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return dict(load_file(str(out / "model.safetensors")))


def _write_checkpoint(
    directory: Path,
    fingerprint: dict[str, Any],
    model: Any,
    step: TrainingStep,
    report: FinetuneReport,
) -> None:
    import torch

    directory.mkdir(parents=True, exist_ok=True)
    state = {
        "fingerprint": fingerprint,
        "model": model.state_dict(),
        "step": step.state_dict(),
        "metrics": report.metrics,
        "history": [asdict(record) for record in report.history],
        "best_epoch": report.best_epoch,
    }
    partial = directory / "state.pt.partial"
    torch.save(state, partial)
    os.replace(partial, directory / "state.pt")
    (directory / "fingerprint.json").write_text(json.dumps(fingerprint, indent=1))


def _resume(directory: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    """The saved training state, if a run with the same options left one."""
    import torch

    path = directory / "state.pt"
    if not path.is_file():
        return None
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"{directory.parent} holds a checkpoint of a fine-tune with other options; rerun with the "
            f"same options to resume it, or choose another --out"
        )
    return state
