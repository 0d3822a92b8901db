"""What a stored caption is: one line of printable text, or none."""

from __future__ import annotations


def clean_caption(text: str | None) -> str | None:
    """Drop control characters, collapse whitespace; an empty caption is no caption."""
    if text is None:
        return None
    printable = "".join(ch if ch.isprintable() else " " for ch in text)
    cleaned = " ".join(printable.split())
    return cleaned or None
