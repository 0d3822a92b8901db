"""The command-line contract that scripts outside the project rely on: flags, --json fields, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import CliRunner

import mmindex

INDEX_FIELDS = ("scanned", "indexed", "unchanged", "failed")


def last_json_line(stdout: str) -> object:
    return json.loads(stdout.strip().splitlines()[-1])


def test_index_json_contract_and_incremental_rerun(
    cli: CliRunner, corpus: Path, tmp_path: Path, tiny_clip: str
) -> None:
    (corpus / "set-a" / "bad.jpg").write_bytes(b"not a jpeg at all")
    db = str(tmp_path / "db")

    first = cli("index", str(corpus), "--db", db, "--model", tiny_clip, "--batch-size", "8", "--json")
    assert first.returncode == 0, first.stderr
    summary = last_json_line(first.stdout)
    assert isinstance(summary, dict)
    assert all(isinstance(summary[field], int) for field in INDEX_FIELDS)
    assert (summary["scanned"], summary["indexed"], summary["unchanged"], summary["failed"]) == (25, 24, 0, 1)

    second = cli("index", str(corpus), "--db", db, "--json")  # the table's model is used when none is given
    assert second.returncode == 0, second.stderr
    again = last_json_line(second.stdout)
    assert isinstance(again, dict)
    assert (again["indexed"], again["unchanged"], again["failed"]) == (0, 24, 0)
    pinned = last_json_line(cli("index", str(corpus), "--db", db, "--precision", "fp32", "--json").stdout)
    assert isinstance(pinned, dict) and pinned["models"] == f"{Path(tiny_clip).resolve()} on cpu in fp32"


def test_index_refusals_exit_2_with_one_line(
    cli: CliRunner, corpus: Path, tmp_path: Path, tiny_clip: str, other_tiny_clip: str
) -> None:
    db = str(tmp_path / "db")
    missing = cli("index", str(tmp_path / "nowhere"), "--db", db, "--json")
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr.strip().splitlines() == [
        f"mmindex: error: source directory {tmp_path / 'nowhere'} does not exist"
    ]

    no_model = cli("index", str(corpus), "--db", db, "--model", str(tmp_path / "no-model"))
    assert no_model.returncode == 2 and "does not exist" in no_model.stderr
    assert len(no_model.stderr.strip().splitlines()) == 1

    assert cli("index", str(corpus), "--db", db, "--model", tiny_clip).returncode == 0
    other = cli("index", str(corpus), "--db", db, "--model", other_tiny_clip)
    assert other.returncode == 2 and "was built with model" in other.stderr
    assert len(other.stderr.strip().splitlines()) == 1

    bad_device = cli("index", str(corpus), "--db", db, "--device", "tpu")
    assert bad_device.returncode == 2 and "--device" in bad_device.stderr

    for arguments, message in [
        (["--precision", "fp8"], "--precision must be one of auto, fp32, bf16, fp16, got 'fp8'"),
        (["--quantize", "int4"], "--quantize must be int8 or none, got 'int4'"),
        (["--quantize", "int8", "--precision", "bf16"], "--quantize int8 computes in fp32"),
        (["--compile", "always"], "--compile must be one of auto, on, off, got 'always'"),
    ]:
        refused = cli("index", str(corpus), "--db", db, *arguments)
        assert refused.returncode == 2 and message in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1


def test_search_stats_and_failures_json(cli: CliRunner, corpus: Path, tmp_path: Path) -> None:
    (corpus / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    db = str(tmp_path / "db")
    assert cli("index", str(corpus), "--db", db, "--model", "toy-clip").returncode == 0

    found = cli("search", "a red circle", "--db", db, "-k", "3", "--json")
    assert found.returncode == 0, found.stderr
    hits = json.loads(found.stdout)
    assert len(hits) == 3 and {"id", "uri", "key", "caption", "score"} <= set(hits[0])
    assert "red-circle" in hits[0]["key"]  # the corpus holds one image of each colour and shape

    probe = next(corpus.glob("set-*/*-blue-*.jpg"))
    labels = json.loads(
        cli("search", "--image", str(probe), "--labels", "red,blue,green", "--db", db, "--json").stdout
    )
    assert [set(row) >= {"label", "score"} for row in labels] == [True] * 3
    assert labels[0]["label"] == "blue"

    filtered = json.loads(cli("search", "a shape", "--db", db, "--where", "format = 'PNG'", "--json").stdout)
    assert filtered and all(hit["key"].endswith(".png") for hit in filtered)
    similar = json.loads(cli("search", "--image", str(probe), "--db", db, "-k", "1", "--json").stdout)
    assert similar[0]["uri"] == str(probe.resolve())

    stats = json.loads(cli("stats", "--db", db, "--json").stdout)
    assert stats["rows"] == 24 and stats["failures"] == 1 and stats["embed_model"] == "toy-clip"
    assert stats["captions"]["human"] + stats["captions"]["none"] == 24

    failures = json.loads(cli("failures", "--db", db, "--json").stdout)
    assert [(f["key"], f["stage"]) for f in failures] == [("bad.png", "decode")]
    assert set(failures[0]) >= {"uri", "key", "stage", "error"}


def test_search_refusals(cli: CliRunner, tmp_path: Path) -> None:
    nothing = cli("search", "--db", str(tmp_path / "db"))
    assert nothing.returncode == 2 and "TEXT" in nothing.stderr
    missing_table = cli("search", "a cat", "--db", str(tmp_path / "db"), "--table", "nope")
    assert missing_table.returncode == 2 and "no table 'nope'" in missing_table.stderr


def test_demo_runs_offline_and_its_results_are_right(cli: CliRunner, tmp_path: Path) -> None:
    result = cli("demo", "--dir", str(tmp_path / "demo"))
    assert result.returncode == 0, result.stderr
    assert "a red circle" in result.stdout and "zero-shot labels" in result.stdout
    found, existing = map(
        int, result.stdout.split(" matching images were ranked")[0].rsplit("\n", 1)[-1].split(" of ")
    )
    assert existing >= 10 and found >= 0.9 * existing
    rerun = cli("demo", "--dir", str(tmp_path / "demo"))
    assert rerun.returncode == 0 and "unchanged 48" in rerun.stdout


def test_finetune_demo_shows_the_new_colours_found_after_fine_tuning(cli: CliRunner, tmp_path: Path) -> None:
    result = cli(
        "demo", "--finetune", "--dir", str(tmp_path / "demo"), env={"MMINDEX_ORCHESTRATOR": "inprocess"}
    )
    assert result.returncode == 0, result.stderr
    assert "text→image R@5" in result.stdout and (tmp_path / "demo" / "finetuned" / "README.md").is_file()
    line = result.stdout.split("right images in the top 4: ")[1].splitlines()[0]
    before, after = int(line.split(" of ")[0]), int(line.split("before, ")[1].split(" of ")[0])
    assert before <= 6 and after >= 12, line
    # the documented path: re-embedded beside the base, compared, then activated
    assert "generation tuned (ready)" in result.stdout and "caption to image R@1" in result.stdout
    active = mmindex.connect(str(tmp_path / "demo" / "db"), "shapes").generations()[0]
    assert active["name"] == "tuned" and active["model"] == str(tmp_path / "demo" / "finetuned")


def test_new_table_reembeds_with_a_new_model_and_leaves_the_old_table_alone(
    cli: CliRunner, corpus: Path, tmp_path: Path, tiny_clip: str, other_tiny_clip: str
) -> None:
    from mmindex.store.reader import Store

    db = str(tmp_path / "db")
    first = cli("index", str(corpus), "--db", db, "--model", tiny_clip, "--caption-missing",
                "--caption-model", "toy-captioner", "--json")  # fmt: skip
    assert first.returncode == 0, first.stderr
    old = Store(db).lancedb_table()
    old_version, old_rows = old.version, old.to_arrow().sort_by("id").to_pylist()

    refused = cli("index", str(corpus), "--db", db, "--new-table", "images_v2")
    assert refused.returncode == 2 and "--model" in refused.stderr
    rebuilt = cli(
        "index", str(corpus), "--db", db, "--model", other_tiny_clip, "--new-table", "images_v2", "--json"
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    counts = last_json_line(rebuilt.stdout)
    assert isinstance(counts, dict) and counts["indexed"] == 24 and counts["captioned"] == 0

    assert Store(db).lancedb_table().version == old_version  # untouched
    new = Store(db, "images_v2")
    assert new.info().model == other_tiny_clip and new.lancedb_table().count_rows() == 24
    new_rows = {row["id"]: row for row in new.lancedb_table().to_arrow().to_pylist()}
    for row in old_rows:
        twin = new_rows[row["id"]]
        assert (twin["caption"], twin["caption_source"], twin["caption_model"]) == (
            row["caption"], row["caption_source"], row["caption_model"]
        )  # fmt: skip
        assert twin["image_embedding"] != row["image_embedding"]


def test_maintain_command(cli: CliRunner, corpus: Path, tmp_path: Path) -> None:
    db = str(tmp_path / "db")
    for _ in range(2):
        (corpus / "set-a" / f"extra-{_}.png").write_bytes(next(corpus.glob("set-a/*.png")).read_bytes())
        assert cli("index", str(corpus), "--db", db, "--model", "toy-clip").returncode == 0
    result = cli("maintain", "--db", db, "--retention", "0s", "--json")  # keep only the current version
    assert result.returncode == 0, result.stderr
    report = last_json_line(result.stdout)
    assert isinstance(report, dict)
    before, after = report["before"]["images"], report["after"]["images"]
    assert after["rows"] == before["rows"] == 26 and after["versions"] < before["versions"]
    assert after["fragments"] <= before["fragments"] and sum(after["unindexed_rows"].values()) == 0
    assert cli("maintain", "--db", db, "--retention", "soon").returncode == 2
    assert cli("maintain", "--db", db, "--table", "nope").returncode == 2
