"""Caption sidecars: `photo.txt` (the caption as text) or `photo.json` (a `caption` field, and for an
image mmindex generated, a `generated` object: the generator model, seed, steps and guidance).

A sidecar never costs the image its place in the index: undecodable bytes are decoded with U+FFFD
replacement characters and a warning is recorded; JSON without a usable caption gives no caption.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from mmindex.captions import clean_caption

SIDECAR_SUFFIXES = (".txt", ".json")
JSON_CAPTION_FIELDS = ("caption", "text", "alt", "title")
GENERATED_FIELD = "generated"


@dataclass(frozen=True, slots=True)
class Provenance:
    """How a synthetic image was made (the `generated` object of its JSON sidecar)."""

    model: str
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None

    def to_json(self) -> dict[str, object]:
        return {"model": self.model, "seed": self.seed, "steps": self.steps, "guidance": self.guidance}


@dataclass(frozen=True, slots=True)
class SidecarCaption:
    caption: str | None
    warning: str | None = None
    provenance: Provenance | None = None


def sidecar_names(image_name: str) -> list[str]:
    """Candidate sidecar names for an image file name, most specific convention first."""
    stem = image_name.rsplit(".", 1)[0] if "." in image_name else image_name
    names = [stem + suffix for suffix in SIDECAR_SUFFIXES]
    if stem != image_name:
        names += [image_name + suffix for suffix in SIDECAR_SUFFIXES]
    return names


def parse_sidecar(data: bytes, name: str) -> SidecarCaption:
    """The caption in a sidecar's bytes; `name` (ending .txt or .json) says which kind it is."""
    text, warning = decode_text(data)
    if name.lower().endswith(".json"):
        return _parse_json(text, warning)
    return SidecarCaption(clean_caption(text), warning)


def decode_text(data: bytes) -> tuple[str, str | None]:
    """Decode UTF-8 (or UTF-16 with a BOM); invalid bytes become U+FFFD and a warning says where."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16"), None
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8-sig"), None
    except UnicodeDecodeError as exc:
        warning = f"invalid UTF-8 at byte {exc.start}; undecodable bytes replaced with U+FFFD"
        return data.decode("utf-8-sig", errors="replace"), warning


def _parse_json(text: str, warning: str | None) -> SidecarCaption:
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        return SidecarCaption(
            None, _join(warning, f"sidecar is not valid JSON: {exc.msg} at line {exc.lineno}")
        )
    if not isinstance(document, dict):
        return SidecarCaption(None, _join(warning, "sidecar JSON is not an object"))
    provenance = _provenance(document.get(GENERATED_FIELD))
    for field in JSON_CAPTION_FIELDS:
        value = document.get(field)
        if isinstance(value, str):
            return SidecarCaption(clean_caption(value), warning, provenance)
    return SidecarCaption(None, warning, provenance)


def _provenance(value: object) -> Provenance | None:
    if not isinstance(value, dict) or not isinstance(value.get("model"), str):
        return None

    def number(name: str, kind: type) -> object:
        raw = value.get(name)
        return kind(raw) if isinstance(raw, int | float) and not isinstance(raw, bool) else None

    return Provenance(value["model"], number("seed", int), number("steps", int), number("guidance", float))  # type: ignore[arg-type]


def _join(first: str | None, second: str) -> str:
    return f"{first}; {second}" if first else second
