"""The `compare` flow: a shadow evaluation of two embedding generations of a table
(mmindex.query.compare), published as a markdown artifact, before `mmindex activate`."""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from mmindex.config import Settings
from mmindex.flows.reporting import artifact_key
from mmindex.query.handle import ImageIndex
from mmindex.store.reader import Store


@flow(name="mmindex-compare", log_prints=False)
def compare_generations(
    a: str,
    b: str = "active",
    db: str | None = None,
    table: str | None = None,
    max_queries: int = 200,
    queries: list[str] | None = None,
) -> dict[str, Any]:
    """Each generation's caption->image and image->caption recall@1/5/10 on the table's human captions
    (or `queries`), the overlap of their results and where they disagree most."""
    settings = Settings.from_env(db=db, table=table)
    index = ImageIndex(Store.from_settings(settings))
    result = index.compare(a, b, queries=max_queries, texts=queries)
    create_markdown_artifact(
        result.to_markdown(),
        key=artifact_key(f"compare-{settings.table}-{result.a.name}-{result.b.name}"),
        description="mmindex generations compared",
    )
    return result.to_dict()
