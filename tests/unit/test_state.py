"""The compact table state that makes an unchanged rerun cost a listing and nothing more."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from mmindex.ingest.sources import item_id
from mmindex.store.state import IndexedState, SeenIds, id_key, id_keys


def test_vectorised_keys_match_scalar_keys() -> None:
    ids = [item_id(f"/data/{i}.jpg") for i in range(1000)]
    array = pa.chunked_array([pa.array(ids[:400]), pa.array(ids[400:])])
    assert id_keys(array).tolist() == [id_key(i) for i in ids]
    assert id_keys(pa.array(ids).slice(10, 5)).tolist() == [id_key(i) for i in ids[10:15]]


def test_status_distinguishes_new_changed_unchanged_and_known_failures() -> None:
    a, b, broken = item_id("a"), item_id("b"), item_id("broken")
    rows = pa.record_batch({"id": [a, b], "fingerprint": pa.array([1, 2], pa.int64())})
    failures = pa.record_batch(
        {
            "id": [broken],
            "fingerprint": [7],
            "retryable": [False],
            "severity": ["error"],
            "stage": ["decode"],
            "error": ["x"],
        }
    )
    state = IndexedState.from_tables([rows], [failures])
    assert state.status(a, 1) == "unchanged"
    assert state.status(b, 3) == "changed"
    assert state.status(item_id("c"), 1) == "new"
    assert state.status(broken, 7) == "known_failure"
    assert state.status(broken, 8) == "new"  # the file changed: try again


def test_retryable_failures_are_tried_again() -> None:
    flaky = item_id("flaky")
    failures = pa.record_batch(
        {
            "id": [flaky],
            "fingerprint": [5],
            "retryable": [True],
            "severity": ["error"],
            "stage": ["fetch"],
            "error": ["x"],
        }
    )
    assert IndexedState.from_tables([], [failures]).status(flaky, 5) == "new"


def test_seen_ids_report_what_a_listing_did_not_see() -> None:
    seen = SeenIds()
    present = [item_id(f"p{i}") for i in range(70000)]  # crosses the 65536 flush boundary
    for row_id in present:
        seen.add(row_id)
    gone = item_id("gone")
    mask = seen.missing(pa.array([present[0], gone, present[-1]]))
    assert mask.tolist() == [False, True, False]
    assert np.all(np.diff(seen.sorted_keys().astype(np.float64)) > 0)


def test_only_whole_item_failures_make_an_item_a_known_failure() -> None:
    """A caption failure (or a sidecar warning) on record must never stop the image itself from being
    indexed: e.g. after a kill between writing failures and writing the image rows."""
    captioned, decoded = item_id("caption-failed"), item_id("decode-failed")
    failures = pa.record_batch(
        {
            "id": [captioned, decoded],
            "fingerprint": [5, 6],
            "retryable": [False, False],
            "severity": ["error", "error"],
            "stage": ["caption", "decode"],
            "error": ["model choked", "not an image"],
        }
    )
    state = IndexedState.from_tables([], [failures])
    assert state.status(captioned, 5) == "new"
    assert state.status(decoded, 6) == "known_failure"
