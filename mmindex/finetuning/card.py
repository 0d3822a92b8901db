"""The files that describe a fine-tuned model: `metrics.json` and a model card (`README.md`)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from mmindex.finetuning.report import FinetuneReport


def write_card(report: FinetuneReport, out: Path, *, db: str) -> None:
    """metrics.json (the report as JSON) and README.md (the same for people) in the model directory."""
    data = report.to_dict()
    data["db"] = db
    data["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    (out / "metrics.json").write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    (out / "README.md").write_text(model_card(report, db=db), encoding="utf-8")


def model_card(report: FinetuneReport, *, db: str) -> str:
    hyper = report.hyperparameters
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: zero-shot-image-classification",
        f"base_model: {report.base_model}",
        "tags: [clip, mmindex, fine-tuned]",
        "---",
        "",
        f"# {report.base_model}, fine-tuned on `{report.table}`",
        "",
        f"Fine-tuned by `mmindex finetune` on the captioned rows of table `{report.table}` "
        f"(version {report.table_version}) in `{db}`: "
        f"{report.rows.get('train', 0)} image-caption pairs trained, {report.rows.get('holdout', 0)} held "
        "out (split by image content, so exact copies stay on one side).",
        f"The weights here are the {'WiSE-FT interpolation' if report.saved == 'wise' else 'fine-tuned'} "
        f"model (best epoch {report.best_epoch} of {len(report.history)} by held-out recall).",
        "",
        "Re-embed a corpus with it: `mmindex index SOURCE --model THIS_DIR --new-table NAME`.",
        "",
        "## Training",
        "",
        *[f"- {name}: {value}" for name, value in hyper.items() if value is not None],
        f"- trainable parameters: {report.trainable_parameters:,}",
        f"- ran as: {report.models}",
        f"- {report.pairs_trained} pairs in {report.train_seconds:.1f} s "
        f"({report.pairs_per_second:.1f} pairs/s)",
    ]
    if not hyper.get("include_generated"):
        lines.append("- captions: human captions only (generated ones would teach the model their captioner)")
    for split in ("holdout", "control"):
        rows = report.metric_rows(split)
        if not rows or len(rows[0]) == 1:
            continue
        headers = list(rows[0])
        lines += ["", f"## Retrieval on the {split} set", ""]
        lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(str(row[h]) for h in headers) + " |" for row in rows]
    lines += [
        "",
        "Recall@k counts a query as found when any image with exactly its caption (text→image), or its own "
        "caption (image→text), ranks in the top k; identical captions are one query.",
    ]
    if report.notes:
        lines += ["", "## Notes", "", *[f"- {note}" for note in report.notes]]
    return "\n".join(lines) + "\n"
