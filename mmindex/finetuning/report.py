"""What a fine-tune reports: rows used, the before/after retrieval figures, time, failures."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mmindex.report import FailureExample

FIGURES = (
    ("text_to_image_r1", "text→image R@1"),
    ("text_to_image_r5", "text→image R@5"),
    ("text_to_image_r10", "text→image R@10"),
    ("text_to_image_median_rank", "text→image median rank"),
    ("image_to_text_r1", "image→text R@1"),
    ("image_to_text_r5", "image→text R@5"),
    ("image_to_text_r10", "image→text R@10"),
    ("image_to_text_median_rank", "image→text median rank"),
)
MODELS = ("base", "finetuned", "wise")


@dataclass
class EpochRecord:
    epoch: int
    loss: float
    pairs: int
    seconds: float
    holdout_mean_recall: float


@dataclass
class FinetuneReport:
    """One fine-tune. `metrics[model][split]` holds retrieval figures, model in base / finetuned /
    wise, split in holdout / control."""

    kind: str = "finetune"
    table: str = ""
    table_version: int | None = None  # the table version every epoch read
    base_model: str = ""
    out: str = ""
    models: str = ""  # how training ran, e.g. "toy-clip on cpu in fp32"
    train_part: str = ""
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    saved: str = "finetuned"  # which weights the output directory holds: finetuned or wise
    resumed_from_epoch: int | None = None
    trainable_parameters: int = 0
    failed: int = 0
    failures_by_stage: dict[str, int] = field(default_factory=dict)
    failure_examples: list[FailureExample] = field(default_factory=list)
    seconds: float = 0.0
    train_seconds: float = 0.0
    pairs_trained: int = 0
    notes: list[str] = field(default_factory=list)
    # --wise-alpha auto: per alpha, held-out recall@5 of the queries the base answered ("known"),
    # of the others ("new") and of all
    wise_frontier: list[dict[str, float]] = field(default_factory=list)

    @property
    def pairs_per_second(self) -> float:
        return self.pairs_trained / self.train_seconds if self.train_seconds else 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pairs_per_second"] = round(self.pairs_per_second, 2)
        data["summary"] = self.summary_lines()
        return data

    def metric_rows(self, split: str = "holdout") -> list[dict[str, Any]]:
        """One row per figure: base, fine-tuned (and WiSE) side by side, for tables and artifacts."""
        present = [m for m in MODELS if split in self.metrics.get(m, {})]
        rows = []
        for name, label in FIGURES:
            row: dict[str, Any] = {"metric": label}
            for model in present:
                row[model] = round(self.metrics[model][split].get(name, float("nan")), 3)
            rows.append(row)
        return rows

    def summary_lines(self) -> list[str]:
        lines = [
            f"fine-tuned {self.base_model} ({self.train_part}) on {self.rows.get('train', 0)} pairs of "
            f"{self.table}, {self.rows.get('holdout', 0)} held out; saved to {self.out}",
            f"{len(self.history)} epochs, best {self.best_epoch}; {self.pairs_per_second:.1f} pairs/s; "
            f"{self.seconds:.1f} s in all",
        ]
        for split in ("holdout", "control"):
            rows = self.metric_rows(split)
            if not rows or len(rows[0]) == 1:
                continue
            headers = [h for h in rows[0] if h != "metric"]
            lines.append(f"{split}: " + " | ".join(headers))
            for row in rows:
                lines.append(f"  {row['metric']}: " + " -> ".join(f"{row[h]:g}" for h in headers))
        if self.wise_frontier:
            lines.append("WiSE-FT alpha: held-out recall@5 of the queries the base answered | of the others")
            lines += [
                f"  {row['alpha']:.1f}: {row['known']:.2f} | {row['new']:.2f}" for row in self.wise_frontier
            ]
        if self.failed:
            stages = ", ".join(f"{stage} {n}" for stage, n in sorted(self.failures_by_stage.items()))
            lines.append(f"{self.failed} images could not be used ({stages}); see failure_examples")
        lines.extend(self.notes)
        return lines

    def to_markdown(self) -> str:
        out = [f"# Fine-tune of `{self.base_model}` on `{self.table}`", ""]
        out += [f"- {line}" for line in self.summary_lines()[:2]]
        for split in ("holdout", "control"):
            rows = self.metric_rows(split)
            if not rows or len(rows[0]) == 1:
                continue
            headers = list(rows[0])
            out += ["", f"## {split}", "", "| " + " | ".join(headers) + " |"]
            out.append("|" + "---|" * len(headers))
            out += ["| " + " | ".join(str(row[h]) for h in headers) + " |" for row in rows]
        if self.wise_frontier:
            out += [
                "",
                "## WiSE-FT frontier (held-out recall@5)",
                "",
                "| alpha | answered by the base | others | all | plot |",
            ]
            out.append("|---|---|---|---|---|")
            out += [
                f"| {row['alpha']:.1f} | {row['known']:.3f} | {row['new']:.3f} | {row['all']:.3f} | "
                f"`{_bar(row['known'])}` `{_bar(row['new'])}` |"
                for row in self.wise_frontier
            ]
        if self.notes:
            out += ["", *[f"- {note}" for note in self.notes]]
        return "\n".join(out) + "\n"


def _bar(value: float, width: int = 20) -> str:
    """A text bar for a share in [0, 1] (the frontier's plot in markdown)."""
    filled = 0 if value != value else round(max(0.0, min(1.0, value)) * width)
    return "█" * filled + "·" * (width - filled)
