"""Embedding generations: the vectors of one model, kept beside those of others in the same table.

The active generation always lives in the columns every reader and writer knows, `image_embedding`
and `text_embedding`; another lives in `image_embedding__NAME` and `text_embedding__NAME`. Each
vector column says in its field metadata which generation and model made it, so the metadata moves
with the column. Activating a generation renames the two pairs of columns in one commit: a reader
sees either the old or the new generation, never a mix. The list of generations (name, model,
dimension, mode, created, state) is kept in the field metadata of `id`, which LanceDB updates in
place.

States: `building` (its columns are being filled), `ready` (filled, not active), `active` (in the
known columns), `retired` (its columns dropped; the space returns at the next compaction).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from mmindex.errors import ConfigError, TableError
from mmindex.schema import META_DIM, META_MODEL

IMAGE_COLUMN = "image_embedding"
TEXT_COLUMN = "text_embedding"
META_GENERATIONS = "mmindex.generations"  # on the `id` field: the list of generations (JSON)
META_GENERATION = "mmindex.generation"  # on each vector column: the generation it holds
META_COLUMN_MODEL = "mmindex.embed_model"  # on each vector column: the model that made it
META_COLUMN_DIM = "mmindex.embedding_dim"
STATES = ("building", "ready", "active", "retired")
NAME = re.compile(r"[a-z0-9][a-z0-9_]{0,47}")


@dataclass(frozen=True)
class Generation:
    name: str
    model: str
    dim: int
    state: str
    created_at: str
    mode: str | None = None  # how its model computed (`fp32 on cpu`, ...), once known

    @property
    def image_column(self) -> str:
        return IMAGE_COLUMN if self.state == "active" else f"{IMAGE_COLUMN}__{self.name}"

    @property
    def text_column(self) -> str:
        return TEXT_COLUMN if self.state == "active" else f"{TEXT_COLUMN}__{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "image_column": self.image_column, "text_column": self.text_column}


def name_for(model: str, taken: set[str]) -> str:
    """A generation name derived from a model id or directory: its last part, lower case, `_` for
    anything but letters and digits; numbered when taken."""
    base = re.sub(r"[^a-z0-9]+", "_", model.rstrip("/").rsplit("/", 1)[-1].lower()).strip("_")[:40] or "model"
    base = "model" if base == ACTIVE else base
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    return name


ACTIVE = "active"  # names the active generation wherever a generation is named


def check_name(name: str) -> str:
    if not NAME.fullmatch(name) or name == ACTIVE:
        raise ConfigError(
            f"generation name {name!r}: use 1-48 lower-case letters, digits and '_' (not 'active')"
        )
    return name


def generations(schema: pa.Schema) -> list[Generation]:
    """Every generation of a table, the active one first. A table from before generations has one:
    its model, active."""
    listed = _listed(schema)
    active = active_generation(schema, listed)
    others = [g for g in listed if g.name != active.name]
    return [active, *sorted(others, key=lambda g: g.created_at)]


def active_generation(schema: pa.Schema, listed: list[Generation] | None = None) -> Generation:
    """The generation in the known columns, read from their own field metadata (so it is right at
    every table version, whatever the list says)."""
    listed = _listed(schema) if listed is None else listed
    meta = _field_meta(schema, IMAGE_COLUMN)
    model = meta.get(META_COLUMN_MODEL) or _table_meta(schema, META_MODEL)
    dim = meta.get(META_COLUMN_DIM) or _table_meta(schema, META_DIM)
    name = meta.get(META_GENERATION)
    known = next((g for g in listed if g.name == name), None)
    if known is not None:
        return replace(known, state="active")
    if model is None:
        raise TableError("the table records no embedding model")
    return Generation(name or name_for(model, set()), model, int(dim or 0), "active", "")


def generation_named(schema: pa.Schema, name: str) -> Generation:
    """The generation called `name` ("active": the active one)."""
    if name == ACTIVE:
        return active_generation(schema)
    for generation in generations(schema):
        if generation.name == name:
            return generation
    known = ", ".join(g.name for g in generations(schema))
    raise ConfigError(f"no generation {name!r} in this table; it has: {known}")


def _listed(schema: pa.Schema) -> list[Generation]:
    raw = _field_meta(schema, "id").get(META_GENERATIONS)
    if not raw:
        return []
    return [Generation(**entry) for entry in json.loads(raw)]


def _field_meta(schema: pa.Schema, column: str) -> dict[str, str]:
    if column not in schema.names:
        return {}
    return {key.decode(): value.decode() for key, value in (schema.field(column).metadata or {}).items()}


def _table_meta(schema: pa.Schema, key: bytes) -> str | None:
    value = (schema.metadata or {}).get(key)
    return value.decode() if value else None


# -- changes (each through the table's writer, which holds the table's lock) --------------------------


def record_active(table: Any) -> None:
    """Mark the known columns with the generation they hold, and list it (the schema v5 migration:
    a table from before generations gets one, active, without rewriting a vector)."""
    schema = table.schema
    active = active_generation(schema)
    created = active.created_at or datetime.now(UTC).isoformat(timespec="seconds")
    active = replace(active, created_at=created)
    _mark_columns(table, active, IMAGE_COLUMN, TEXT_COLUMN)
    _write_list(table, [active, *(g for g in _listed(schema) if g.name != active.name)])


def add_generation(table: Any, name: str, model: str, dim: int) -> Generation:
    """A new generation in state `building`, with empty columns of its own."""
    check_name(name)
    schema = table.schema
    if any(g.name == name and g.state != "retired" for g in generations(schema)):
        raise ConfigError(f"the table already has a generation {name!r}")
    generation = Generation(name, model, dim, "building", datetime.now(UTC).isoformat(timespec="seconds"))
    vector = pa.list_(pa.float32(), dim)
    table.add_columns(
        pa.schema([pa.field(generation.image_column, vector), pa.field(generation.text_column, vector)])
    )
    _mark_columns(table, generation, generation.image_column, generation.text_column)
    _write_list(table, [*(g for g in _listed(table.schema) if g.name != name), generation])
    return generation


def set_state(table: Any, name: str, state: str, mode: str | None = None) -> None:
    listed = [
        replace(g, state=state, mode=mode or g.mode) if g.name == name else g for g in _listed(table.schema)
    ]
    _write_list(table, listed)


def activate(table: Any, name: str) -> tuple[Generation, Generation]:
    """Put generation `name` in the known columns and the active one in its own, in one commit.
    Returns (previous, now active)."""
    schema = table.schema
    previous = active_generation(schema)
    chosen = generation_named(schema, name)
    if chosen.state == "retired":
        raise ConfigError(f"generation {name!r} is retired: build it again with `mmindex reembed`")
    if chosen.name == previous.name:
        return previous, previous
    parked = replace(previous, state="ready")
    table.alter_columns(
        {"path": IMAGE_COLUMN, "rename": parked.image_column, "nullable": True},
        {"path": TEXT_COLUMN, "rename": parked.text_column, "nullable": True},
        {"path": chosen.image_column, "rename": IMAGE_COLUMN},
        {"path": chosen.text_column, "rename": TEXT_COLUMN},
    )
    now_active = replace(chosen, state="active")
    _write_list(
        table,
        [
            parked if g.name == previous.name else now_active if g.name == name else g
            for g in _listed(table.schema)
        ],
    )
    return previous, now_active


def retire(table: Any, name: str) -> Generation:
    """Drop a generation's columns and their indices; it stays listed as retired."""
    generation = generation_named(table.schema, name)
    if generation.state == "active":
        raise ConfigError(f"generation {name!r} is active: activate another one first")
    if generation.state == "retired":
        return generation
    columns = [generation.image_column, generation.text_column]
    for index in table.list_indices():
        if index.columns and index.columns[0] in columns:
            table.drop_index(index.name)
    table.drop_columns([c for c in columns if c in table.schema.names])
    set_state(table, name, "retired")
    return replace(generation, state="retired")


def _mark_columns(table: Any, generation: Generation, image_column: str, text_column: str) -> None:
    metadata = {
        META_GENERATION: generation.name,
        META_COLUMN_MODEL: generation.model,
        META_COLUMN_DIM: str(generation.dim),
    }
    for column in (image_column, text_column):
        if column in table.schema.names:
            table.update_field_metadata({"path": column, "metadata": metadata})


def _write_list(table: Any, listed: list[Generation]) -> None:
    stored = [{**asdict(g), "state": "ready" if g.state == "active" else g.state} for g in listed]
    table.update_field_metadata({"path": "id", "metadata": {META_GENERATIONS: json.dumps(stored)}})
