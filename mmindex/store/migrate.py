"""Schema versions of the images table: read on open, upgraded by the writer, refused when newer.

A table records the version of the schema it was written with (`mmindex.schema_version`: in the
schema metadata since version 1, and on the `id` field once a migration has run, because LanceDB
can update field metadata in place but not the schema's). Each migration takes a table from version
N - 1 to N, typically by adding columns that older rows leave null, so it never rewrites data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from mmindex.errors import TableError
from mmindex.schema import (
    EMBED_MODE_FIELD,
    META_SCHEMA_VERSION,
    PROVENANCE_FIELDS,
    SCHEMA_VERSION,
    THUMBNAIL_FIELD,
)
from mmindex.store.generations import record_active

Migration = Callable[[Any], None]

CURRENT_VERSION = int(SCHEMA_VERSION)


def table_version(schema: pa.Schema) -> int:
    """The schema version a table was written with (1 for tables that predate the marker)."""
    field_meta = schema.field("id").metadata or {} if "id" in schema.names else {}
    raw = field_meta.get(META_SCHEMA_VERSION) or (schema.metadata or {}).get(META_SCHEMA_VERSION)
    try:
        return int(raw) if raw else 1
    except ValueError:
        raise TableError(f"the table's schema version {raw!r} is not a number") from None


def check_readable(schema: pa.Schema, where: str) -> int:
    """The table's version; TableError if a newer mmindex wrote it."""
    version, newest = table_version(schema), CURRENT_VERSION
    if version > newest:
        raise TableError(
            f"table {where} has schema version {version}, written by a newer mmindex; this mmindex "
            f"reads up to version {newest}: upgrade mmindex (pip install -U mmindex)"
        )
    return version


def migrate(table: Any, where: str) -> list[str]:
    """Bring a table to the current schema version, one step at a time; returns what it did."""
    version = check_readable(table.schema, where)
    done = []
    for step in range(version + 1, CURRENT_VERSION + 1):
        if step not in MIGRATIONS:
            raise TableError(f"no migration from schema version {step - 1} to {step} for table {where}")
        MIGRATIONS[step](table)
        table.update_field_metadata({"path": "id", "metadata": {META_SCHEMA_VERSION.decode(): str(step)}})
        done.append(f"migrated {where} to schema version {step}")
    return done


def add_columns(*fields: pa.Field) -> Migration:
    """A migration that adds nullable columns (existing rows read them as null)."""

    def step(table: Any) -> None:
        missing = [field for field in fields if field.name not in table.schema.names]
        if missing:
            table.add_columns(missing)

    return step


# version N -> the step that brings a version N - 1 table to N
MIGRATIONS: dict[int, Migration] = {
    2: add_columns(THUMBNAIL_FIELD),  # previews; filled by new runs and `mmindex thumbnails`
    3: add_columns(*PROVENANCE_FIELDS),  # generated images: synthetic flag, generator, seed, steps, guidance
    4: add_columns(EMBED_MODE_FIELD),  # the number format each row was embedded in (older rows: null)
    5: record_active,  # the vectors say which generation and model made them; no vector is rewritten
}
