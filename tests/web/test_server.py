"""`mmindex serve` as a client sees it: a real uvicorn process, a real HTTP client, bad inputs too."""

from __future__ import annotations

import io
import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import CliRunner, free_port
from PIL import Image

from mmindex.store.reader import Store

UPLOAD_CAP = 1024 * 1024  # the server under test takes uploads up to 1 MB


@pytest.fixture(scope="module")
def client(served: tuple[str, Path]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[0], timeout=60) as http:
        yield http


def kind_of(key: str) -> str:
    return "-".join(Path(key).stem.split("-")[1:])


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with almost no data: a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_health_stats_and_local_api_docs(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "rows": 98}
    stats = client.get("/api/stats").json()
    assert stats["rows"] == 98 and stats["embed_model"] == "toy-clip"
    assert (
        stats["text_queries"].startswith("toy-clip on cpu in fp32")
        and "too small to gain" in stats["text_queries"]
    )
    paths = client.get("/openapi.json").json()["paths"]
    assert {
        "/api/search",
        "/api/similar/{row_id}",
        "/api/thumbnail/{row_id}",
        "/api/stats",
        "/healthz",
    } <= set(paths)
    schema = client.get("/openapi.json").json()
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            if operation.get("parameters") or operation.get("requestBody"):
                refused = operation["responses"]["422"]["content"]["application/json"]["schema"]
                assert refused == {"$ref": "#/components/schemas/ErrorBody"}, (path, method)
    assert set(schema["components"]["schemas"]["ErrorBody"]["properties"]) == {"error"}
    docs = client.get("/docs").text
    assets = [part.split('"')[0] for part in docs.split('src="')[1:]] + [
        part.split('"')[0] for part in docs.split('href="')[1:]
    ]
    assert assets and all(asset.startswith("/") for asset in assets), assets  # nothing from a CDN
    assert all(client.get(asset).status_code == 200 for asset in assets)
    assert 'id="q"' in client.get("/").text


def test_text_search_pages_and_thumbnails(client: httpx.Client) -> None:
    lean = client.get("/api/search", params={"q": "a blue star", "k": 4}).json()
    assert "thumbnail" not in lean["hits"][0]  # only when asked for
    page = client.get("/api/search", params={"q": "a blue star", "k": 4, "thumbnails": "true"}).json()
    assert [hit["id"] for hit in page["hits"]] == [hit["id"] for hit in lean["hits"]]
    assert (
        page["score_kind"] == "cosine"
        and [kind_of(hit["key"]) for hit in page["hits"]][:3] == ["blue-star"] * 3
    )
    thumbnail = client.get(page["hits"][0]["thumbnail"])
    assert thumbnail.headers["content-type"] == "image/webp"
    assert max(Image.open(io.BytesIO(thumbnail.content)).size) <= 256
    second = client.get("/api/search", params={"q": "a blue star", "k": 2, "offset": 2}).json()
    assert [hit["id"] for hit in second["hits"]] == [hit["id"] for hit in page["hits"]][2:]
    words = client.get("/api/search", params={"q": "yellow", "mode": "text", "k": 3}).json()
    assert words["score_kind"] == "bm25" and all("yellow" in hit["caption"] for hit in words["hits"])
    assert (
        client.get("/api/search", params={"q": "a green square", "mode": "hybrid"}).json()["score_kind"]
        == "rrf"
    )


def test_concurrent_text_queries_each_get_their_own_answer(client: httpx.Client) -> None:
    """Concurrent queries share forward passes; each must still get the results for its own text."""
    from concurrent.futures import ThreadPoolExecutor

    kinds = [f"{c}-{s}" for c in ("red", "green", "blue", "purple") for s in ("circle", "star")]

    def top(kind: str) -> str:
        colour, shape = kind.split("-")
        hits = client.get("/api/search", params={"q": f"a {colour} {shape}", "k": 1}).json()["hits"]
        return str(kind_of(hits[0]["key"]))

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(top, kinds)) == kinds


def test_hide_duplicates_drops_exact_copies(client: httpx.Client) -> None:
    probe = client.get("/api/search", params={"q": "a red square", "k": 40}).json()["hits"]
    copy_id = next(hit["id"] for hit in probe if hit["key"].startswith("copies/"))
    similar = client.get(f"/api/similar/{copy_id}", params={"k": 5}).json()["hits"]
    assert copy_id not in [hit["id"] for hit in similar]
    assert sum(hit["score"] > 0.9999 for hit in similar) == 2  # the original and the other copy
    distinct = client.get(f"/api/similar/{copy_id}", params={"k": 5, "distinct": "true"}).json()["hits"]
    assert sum(hit["score"] > 0.9999 for hit in distinct) == 0  # copies of the probe itself are hidden
    assert len(distinct) == 5 and len({hit["id"] for hit in distinct}) == 5


def test_empty_pages_on_every_endpoint(client: httpx.Client, served: tuple[str, Path]) -> None:
    probe = client.get("/api/search", params={"q": "a green star", "k": 1}).json()["hits"][0]
    nothing, past_the_end = {"where": "width < 0"}, {"offset": 5000}
    for params in (nothing, past_the_end):
        for distinct in ("false", "true"):
            page = {"k": 5, "distinct": distinct, **params}
            answers = [client.get(f"/api/similar/{probe['id']}", params=page)]
            answers += [
                client.get("/api/search", params={"q": "a green star", "mode": mode, **page})
                for mode in ("vector", "text", "hybrid")
            ]
            upload = Path(probe["uri"]).read_bytes()
            answers.append(client.post("/api/search", params=page, files={"image": ("q.jpg", upload)}))
            for answer in answers:
                assert answer.status_code == 200, (answer.url, answer.text)
                assert answer.json()["hits"] == []


@pytest.mark.parametrize("distinct", ["false", "true"])
def test_more_like_this_pages_have_no_repeats_or_gaps(client: httpx.Client, distinct: str) -> None:
    probe = client.get("/api/search", params={"q": "a red square", "k": 40}).json()["hits"]
    copy_id = next(hit["id"] for hit in probe if hit["key"].startswith("copies/"))
    whole = client.get(f"/api/similar/{copy_id}", params={"k": 200, "distinct": distinct}).json()["hits"]
    walked = [
        hit["id"]
        for offset in range(0, 105, 7)
        for hit in client.get(
            f"/api/similar/{copy_id}", params={"k": 7, "offset": offset, "distinct": distinct}
        ).json()["hits"]
    ]
    assert walked == [hit["id"] for hit in whole] and copy_id not in walked
    assert len(walked) == (97 if distinct == "false" else 95)  # 98 rows; distinct hides the 2 copies


def test_generated_images_can_be_excluded_or_selected(client: httpx.Client) -> None:
    real = client.get("/api/search", params={"q": "a red square", "k": 5, "synthetic": "exclude"}).json()
    assert len(real["hits"]) == 5 and all(hit["synthetic"] is False for hit in real["hits"])
    only = client.get("/api/search", params={"q": "a red square", "synthetic": "only"}).json()
    assert only["hits"] == []  # this table holds no generated image
    wrong = client.get("/api/search", params={"q": "a red square", "synthetic": "sometimes"})
    assert wrong.status_code == 422 and "error" in wrong.json()


def test_image_upload_finds_the_image(client: httpx.Client, served: tuple[str, Path]) -> None:
    hit = client.get("/api/search", params={"q": "an orange circle", "k": 1}).json()["hits"][0]
    data = Path(hit["uri"]).read_bytes()
    found = client.post("/api/search", params={"k": 3}, files={"image": ("q.jpg", data, "image/jpeg")}).json()
    assert found["hits"][0]["id"] == hit["id"] and found["hits"][0]["score"] == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize(
    ("request_args", "status"),
    [
        ({"method": "GET", "url": "/api/search", "params": {"q": "x", "k": 100000}}, 422),
        (
            {
                "method": "GET",
                "url": "/api/search",
                "params": {"q": "x", "where": "width > 1; DROP TABLE images"},
            },
            400,
        ),
        ({"method": "GET", "url": "/api/search", "params": {"q": "x", "where": "lower(key) = 'a'"}}, 400),
        ({"method": "GET", "url": "/api/search", "params": {"q": "x", "where": "nosuch = 1"}}, 400),
        ({"method": "GET", "url": "/api/search", "params": {"q": "x", "mode": "sql"}}, 422),
        ({"method": "GET", "url": "/api/search", "params": {"q": ""}}, 422),
        ({"method": "GET", "url": "/api/search", "params": {"q": "x", "min_score": 2}}, 422),
        ({"method": "GET", "url": "/api/search", "params": {"q": "x", "order_by": "thumbnail"}}, 400),
        (
            {"method": "GET", "url": "/api/search", "params": {"q": "x", "mode": "text", "min_score": 0.1}},
            400,
        ),
        ({"method": "GET", "url": "/api/similar/" + "0" * 32}, 404),
        ({"method": "GET", "url": "/api/similar/..%2F..%2Fetc%2Fpasswd"}, 404),
        ({"method": "GET", "url": "/api/thumbnail/not-an-id"}, 404),
        ({"method": "GET", "url": "/api/thumbnail/" + "0" * 32 + "%0A"}, 404),
        ({"method": "GET", "url": "/api/similar/" + "0" * 32 + "%0A"}, 404),
        (
            {
                "method": "POST",
                "url": "/api/search",
                "files": {"image": ("x.jpg", b"garbage" * 100, "image/jpeg")},
            },
            422,
        ),
        (
            {
                "method": "POST",
                "url": "/api/search",
                "files": {"image": ("b.png", png_header_only(60000, 60000))},
            },
            422,
        ),
        ({"method": "POST", "url": "/api/search", "files": {"image": ("e.png", b"")}}, 422),
        (
            {
                "method": "POST",
                "url": "/api/search",
                "files": {"image": ("big.jpg", b"\xff" * (2 * UPLOAD_CAP))},
            },
            413,
        ),
    ],
)
def test_bad_requests_get_a_json_4xx(
    client: httpx.Client, request_args: dict[str, object], status: int
) -> None:
    response = client.request(**request_args)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json" and response.json()["error"]


def test_a_row_id_is_32_hex_digits_and_nothing_after_them() -> None:
    from mmindex.errors import TableError
    from mmindex.server.app import _checked_id

    assert _checked_id("0a" * 16) == "0a" * 16
    for wrong in ("0a" * 16 + "\n", "0a" * 16 + "\n' OR 1=1", "0A" * 16, "0a" * 15):
        with pytest.raises(TableError, match="no row"):
            _checked_id(wrong)


def test_uploads_are_capped_without_content_length(client: httpx.Client) -> None:
    """A chunked body (no Content-Length) is counted as it arrives, and refused past the cap."""
    boundary = "b0undary"

    def chunks() -> Iterator[bytes]:  # a well-formed multipart upload whose image part never ends
        disposition = 'Content-Disposition: form-data; name="image"; filename="a.jpg"'
        yield f"--{boundary}\r\n{disposition}\r\n\r\n".encode()
        for _ in range(64):  # 4 MB in 64 KB pieces, 4x the cap
            yield b"\0" * 65536

    response = client.post(
        "/api/search",
        content=chunks(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}", "Transfer-Encoding": "chunked"},
    )
    assert response.status_code == 413 and "larger than" in response.json()["error"]


def test_a_query_that_is_not_utf8_is_not_a_server_error(served: tuple[str, Path]) -> None:
    response = httpx.get(served[0] + "/api/search?q=%FF%FE%FA&k=2", timeout=60)
    assert response.status_code < 500 and response.headers["content-type"] == "application/json"


def test_cli_search_through_the_server_prints_the_local_json(
    served: tuple[str, Path], cli: CliRunner
) -> None:
    remote = cli("search", "a purple triangle", "-k", "4", "--json", env={"MMINDEX_SERVER": served[0]})
    local = cli("search", "a purple triangle", "-k", "4", "--json", "--db", str(served[1]), "--no-server")
    assert remote.returncode == local.returncode == 0, remote.stderr + local.stderr
    remote_hits, local_hits = json.loads(remote.stdout), json.loads(local.stdout)
    assert [hit["id"] for hit in remote_hits] == [hit["id"] for hit in local_hits]
    assert set(remote_hits[0]) == set(local_hits[0])
    assert remote_hits[0]["score"] == pytest.approx(local_hits[0]["score"], abs=1e-4)
    cutoff = str(remote_hits[2]["score"] - 1e-4)  # the best three (the server's scores are float32)
    controls = ("-k", "10", "--min-score", cutoff, "--order-by", "key desc", "--json")
    remote = cli("search", "a purple triangle", *controls, env={"MMINDEX_SERVER": served[0]})
    local = cli("search", "a purple triangle", *controls, "--db", str(served[1]), "--no-server")
    assert remote.returncode == local.returncode == 0, remote.stderr + local.stderr
    keys = [hit["key"] for hit in json.loads(remote.stdout)]
    assert keys == [hit["key"] for hit in json.loads(local.stdout)]
    assert keys == sorted((hit["key"] for hit in remote_hits[:3]), reverse=True)
    refused = cli("search", "x", "--where", "1=1", "--server", served[0])
    assert refused.returncode == 2 and "refused" in refused.stderr
    unreachable = cli("search", "x", "--server", f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr


REQUESTS = [  # (the command's arguments, the same as SearchRequest keywords)
    (
        ["a red square", "-k", "6", "--distinct", "--where", "width >= 16", "--synthetic", "exclude"],
        {"text": "a red square", "k": 6, "distinct": True, "where": "width >= 16", "synthetic": "exclude"},
    ),
    (
        ["red square", "--hybrid", "-k", "5", "--offset", "2"],
        {"text": "red square", "mode": "hybrid", "k": 5, "offset": 2},
    ),
]


@pytest.mark.parametrize(("arguments", "keywords"), REQUESTS)
def test_one_search_request_answers_alike_from_python_the_cli_and_the_server(
    served: tuple[str, Path],
    cli: CliRunner,
    client: httpx.Client,
    arguments: list[str],
    keywords: dict[str, object],
) -> None:
    """Python, the command in process, the command through the server and plain HTTP build the same
    SearchRequest, and get the same hits."""
    import mmindex
    from mmindex.query.request import SearchRequest

    request = SearchRequest(**keywords)  # type: ignore[arg-type]
    python = [hit.id for hit in mmindex.connect(str(served[1])).search(**keywords)]  # type: ignore[arg-type]
    local = cli("search", *arguments, "--json", "--db", str(served[1]), "--no-server")
    remote = cli("search", *arguments, "--json", "--server", served[0])
    http = client.get("/api/search", params=request.to_params())
    assert local.returncode == remote.returncode == 0 and http.status_code == 200, (
        local.stderr + remote.stderr
    )
    assert len(python) == keywords["k"]
    assert [hit["id"] for hit in json.loads(local.stdout)] == python
    assert [hit["id"] for hit in json.loads(remote.stdout)] == python
    assert [hit["id"] for hit in http.json()["hits"]] == python


def test_a_bad_search_request_is_refused_alike_everywhere(
    served: tuple[str, Path], cli: CliRunner, client: httpx.Client
) -> None:
    import mmindex
    from mmindex.errors import ConfigError

    message = "min_score is a cosine cutoff; bm25 scores have no fixed scale"
    with pytest.raises(ConfigError, match=message):
        mmindex.connect(str(served[1])).search("red", mode="text", min_score=0.2)
    for where in (["--db", str(served[1]), "--no-server"], ["--server", served[0]]):
        refused = cli("search", "red", "--text-only", "--min-score", "0.2", *where)
        assert refused.returncode == 2 and message in refused.stderr
    answer = client.get("/api/search", params={"q": "red", "mode": "text", "min_score": "0.2"})
    assert answer.status_code in (400, 422) and message in answer.json()["error"]


def test_the_cli_finds_the_running_server_of_its_table(served: tuple[str, Path], cli: CliRunner) -> None:
    import os

    from mmindex.server.announce import Announcement, announcement_path, find_server

    url, db = served
    path = announcement_path(str(db), "images")
    assert path is not None and path.stat().st_mode & 0o777 == 0o600
    assert find_server(str(db), "images") == Announcement(
        url, json.loads(path.read_text())["pid"], str(db), "images"
    )

    found = cli("search", "a green star", "-k", "3", "--json", "--db", str(db))
    here = cli("search", "a green star", "-k", "3", "--json", "--db", str(db), "--no-server")
    assert found.returncode == here.returncode == 0, found.stderr + here.stderr
    assert f"answered by the running mmindex serve at {url}" in found.stderr
    assert "answered by" not in here.stderr
    assert [hit["id"] for hit in json.loads(found.stdout)] == [hit["id"] for hit in json.loads(here.stdout)]

    other = announcement_path(str(db), "other")
    assert other is not None
    other.write_text(json.dumps({"url": url, "pid": os.getpid(), "db": str(db), "table": "other"}))
    assert find_server(str(db), "other") is None  # the server answers for `images`, not `other`
    other.write_text(json.dumps({"url": url, "pid": 2**22 + 12345, "db": str(db), "table": "other"}))
    assert find_server(str(db), "other") is None and not other.exists()  # its process is gone: removed


def test_rows_committed_while_the_server_runs_are_searched(
    client: httpx.Client, served: tuple[str, Path]
) -> None:
    from mmindex.ingest.pipeline import run_index
    from mmindex.ingest.sources import open_source
    from mmindex.models.clip import ClipEmbedder
    from mmindex.store.reader import Store
    from mmindex.toy.shapes import write_corpus

    extra = served[1].parent / "extra"
    write_corpus(extra, 4, seed=99)
    run_index(open_source(str(extra)), ClipEmbedder.load("toy-clip"), Store(str(served[1])))
    assert client.get("/healthz").json()["rows"] == 102
    keys = {hit["uri"] for hit in client.get("/api/search", params={"q": "a shape", "k": 102}).json()["hits"]}
    assert any(uri.startswith(str(extra)) for uri in keys)


def test_a_row_its_original_and_example_captions(client: httpx.Client, served: tuple[str, Path]) -> None:
    hit = client.get("/api/search", params={"q": "a green square", "k": 1}).json()["hits"][0]
    row = client.get(f"/api/row/{hit['id']}").json()
    assert (
        row["uri"] == hit["uri"] and row["sha256"] and "image_embedding" not in row and "thumbnail" not in row
    )
    original = client.get(f"/api/original/{hit['id']}")
    assert original.status_code == 200 and original.content == Path(hit["uri"]).read_bytes()
    assert original.headers["content-type"] == "image/" + hit["format"].lower()
    assert client.get("/api/original/" + "0" * 32).status_code == 404  # only rows of the table, by id
    assert client.get("/api/original/..%2F..%2Fetc%2Fpasswd").status_code == 404
    examples = client.get("/api/examples", params={"n": 3}).json()["captions"]
    assert 1 <= len(examples) <= 3 and len(set(examples)) == len(examples)
    captions = Store(str(served[1])).lancedb_table().search().select(["caption"]).limit(None).to_arrow()
    assert set(examples) <= set(captions["caption"].to_pylist())


def test_concurrent_text_queries_share_one_forward_pass_and_one_search(shapes_db: Path) -> None:
    """Text queries that arrive while the model is busy are embedded and searched as one batch, and
    each gets the hits it would get alone."""
    import threading
    import time

    from mmindex.query.handle import ImageIndex
    from mmindex.server.app import Page, SearchService

    service = SearchService(ImageIndex(Store(str(shapes_db)), device="cpu"))
    service.warm("off")
    texts = [f"a {colour} {shape}" for colour in ("red", "blue") for shape in ("circle", "star", "square")]
    alone = {text: [hit.id for hit in service.search(Page(k=4).request(text=text))] for text in texts}
    service._vectors.clear()  # embed them again, together
    before = (service._text_searches.batches, service._text_searches.items)
    together: dict[str, list[str]] = {}

    def ask(text: str) -> None:
        together[text] = [hit.id for hit in service.search(Page(k=4).request(text=text))]

    threads = [threading.Thread(target=ask, args=(text,)) for text in texts]
    with service._model_lock:  # busy: the first query waits for the model, the others gather
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            waiting = sum(len(batch) for batch in service._text_searches._pending.values())
            if service._text_searches.items - before[1] == 1 and waiting == len(texts) - 1:
                break
            time.sleep(0.01)
    for thread in threads:
        thread.join()
    batches = service._text_searches.batches - before[0]
    assert together == alone
    assert batches == 2  # the one that waited for the model, then everyone who came meanwhile
