"""The exceptions mmindex raises.

    MMIndexError                  base class; never raised itself
    ├── ConfigError               the run cannot start as asked: the CLI prints one line and exits 2
    │   ├── SourceError           missing path, unreadable manifest, wrong bucket, denied credentials
    │   ├── ModelError            unknown model id, not a model directory, wrong kind of model, bad device
    │   └── TableError            missing table, table built with another embedding model, bad filter
    ├── StoreError                LanceDB failed in a way a retry will not fix
    ├── RunStopped                most items failed the same unexpected way: a bug, not bad data
    └── ItemError                 one item failed at one stage; recorded as a failures row, never fatal
        ├── FetchError            the bytes could not be read (retryable)
        └── DecodeError           the bytes are not a usable image (permanent until the file changes)

Per-item problems never escape the pipeline as exceptions: they become rows of the failures table.
"""

from __future__ import annotations

import re


class MMIndexError(Exception):
    """Base class of every error mmindex raises on purpose."""


class ConfigError(MMIndexError):
    """Bad arguments or configuration; the message is one line that names the bad value and the fix."""


class SourceError(ConfigError):
    """The source cannot be listed at all (as opposed to one unreadable item)."""


class ModelError(ConfigError):
    """A model cannot be found, is not of the expected kind, or cannot run on the chosen device."""


class TableError(ConfigError):
    """The table is missing, incompatible with the request, or the query against it is malformed."""


class StoreError(MMIndexError):
    """The database failed in a way that retrying the run will not fix."""


class RunStopped(MMIndexError):
    """A run stopped itself because most items failed with the same unexpected error (a bug or a broken
    environment, not bad files); writing a failure row for each would only bury the cause."""


class ItemError(MMIndexError):
    """One item failed at one stage. `retryable` says whether a later run should try it again."""

    stage = "item"
    retryable = False

    def __init__(self, message: str, *, stage: str | None = None, retryable: bool | None = None) -> None:
        super().__init__(message)
        if stage is not None:
            self.stage = stage
        if retryable is not None:
            self.retryable = retryable


class FetchError(ItemError):
    """The item's bytes could not be read (I/O or network error that outlived its retries)."""

    stage = "fetch"
    retryable = True


class DecodeError(ItemError):
    """The bytes are not an image Pillow can decode safely (corrupt, truncated, disguised, a bomb)."""

    stage = "decode"
    retryable = False


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


_ENGINE_SOURCE = re.compile(r",?\s*/\S+\.rs:\d+(:\d+)?")  # where in the Rust engine it was raised
_ENGINE_PREAMBLE = re.compile(
    r"^(Invalid input, |Error resolving filter expression .*?: |Invalid user input: )+"
)


def engine_message(exc: BaseException) -> str:
    """The first line of an error from the storage engine, without its source paths and preamble:
    what a user can act on ("Received literal Utf8("abc") and could not convert to ... 'Int32'")."""
    line = _ENGINE_SOURCE.sub("", first_line(exc)).strip()
    return _ENGINE_PREAMBLE.sub("", line) or line
