"""Generated images into a corpus: prompts -> a text-to-image model -> PNG files with JSON sidecars
that record the prompt as the caption and how the image was made (model, seed, steps, guidance).

File names derive from the prompt and the seed, so a rerun finds the images it already made and
makes only the missing ones; the index run that follows reads the provenance from the sidecars.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmindex.ingest.sources.sidecar import GENERATED_FIELD, Provenance
from mmindex.models.generator import ImageSettings, TextToImage
from mmindex.report import ProgressUpdate, RunReport


@dataclass(frozen=True)
class Planned:
    prompt: str
    seed: int
    name: str  # file name without extension


def plan_images(prompts: list[str], n: int, seed: int) -> list[Planned]:
    """Image i of the run gets seed + i; names are `slug-sSEED` (unique per prompt and seed)."""
    planned = []
    for number, (prompt, copy) in enumerate((p, c) for p in prompts for c in range(n)):
        del copy
        planned.append(Planned(prompt, seed + number, f"{_slug(prompt)}-s{seed + number}"))
    return planned


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "image"


class Output:
    """Where images go: a local folder, or an S3 prefix (written with the sources' S3 settings)."""

    def __init__(self, location: str, s3_config: Any | None = None) -> None:
        self.location = location.rstrip("/")
        self._s3: Any = None
        if location.startswith("s3://"):
            from mmindex.s3 import S3Config, S3Objects, parse_s3_uri

            self._s3 = S3Objects(s3_config or S3Config())
            self.bucket, prefix = parse_s3_uri(self.location)
            self.prefix = prefix + "/" if prefix else ""
        else:
            Path(self.location).mkdir(parents=True, exist_ok=True)

    def exists(self, name: str) -> bool:
        if self._s3 is None:
            return all((Path(self.location) / f"{name}{ext}").is_file() for ext in (".png", ".json"))
        try:
            self._s3.client.head_object(Bucket=self.bucket, Key=f"{self.prefix}{name}.json")
            return True
        except Exception:  # absent (or unreadable): made again
            return False

    def put(self, name: str, png: bytes, sidecar: bytes) -> None:
        """The image first, then the sidecar: a sidecar only ever describes a complete image."""
        for ext, body in ((".png", png), (".json", sidecar)):
            if self._s3 is None:
                target = Path(self.location) / f"{name}{ext}"
                partial = target.with_suffix(ext + ".partial")
                partial.write_bytes(body)
                partial.replace(target)
            else:
                self._s3.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}{name}{ext}", Body=body)


def sidecar_of(prompt: str, provenance: Provenance) -> bytes:
    return json.dumps({"caption": prompt, GENERATED_FIELD: provenance.to_json()}, indent=1).encode()


def run_generate(
    generator: TextToImage,
    planned: list[Planned],
    settings: ImageSettings,
    output: Output,
    *,
    batch_size: int = 4,
    progress: Callable[[ProgressUpdate], None] | None = None,
    report: RunReport | None = None,
) -> RunReport:
    """Make the planned images that `output` lacks, `batch_size` per pipeline call."""
    report = report or RunReport(kind="generate", source=output.location)
    report.models = generator.compute
    recorded = generator.defaults(settings)
    started = time.perf_counter()
    todo = [image for image in planned if not output.exists(image.name)]
    report.scanned, report.unchanged = len(planned), len(planned) - len(todo)
    for batch in _batches(todo, batch_size):
        try:
            with report.timed("generate", len(batch)):
                images = generator.generate([b.prompt for b in batch], [b.seed for b in batch], settings)
        except Exception as exc:  # the model failed on this batch (out of memory, a bad prompt): go on
            for image in batch:
                report.record_failure(
                    image.name, "generate", report.record_unexpected(image.name, "generate", exc)
                )
            continue
        with report.timed("write", len(batch)):
            for image, picture in zip(batch, images, strict=True):
                buffer = io.BytesIO()
                picture.save(buffer, format="PNG")
                provenance = Provenance(generator.model_id, image.seed, recorded.steps, recorded.guidance)
                output.put(image.name, buffer.getvalue(), sidecar_of(image.prompt, provenance))
        report.generated += len(batch)
        if progress is not None:
            progress(ProgressUpdate(report.generated, len(todo), len(planned), True))
    report.seconds = time.perf_counter() - started
    return report


def _batches(items: list[Planned], size: int) -> Iterator[list[Planned]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
