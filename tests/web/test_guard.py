"""The search server's guards, in process on the shapes table (the model is never loaded): the Host
allow-list, the token, the security headers and the access log; then `mmindex serve` bound to every
interface, as a user starts it, with the token it makes up and the CLI that sends it."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import CliRunner, free_port, wait_for_http
from starlette.testclient import TestClient

import mmindex
from mmindex.server.app import create_app
from mmindex.server.guard import allowed_hosts, host_name

TOKEN = "s3cret-token"


def app_for(db: Path, **guards: Any) -> Any:
    return create_app(mmindex.connect(str(db)), warm=False, **guards)


@pytest.fixture(scope="module")
def open_app(shapes_db: Path) -> TestClient:
    return TestClient(app_for(shapes_db, hosts=allowed_hosts("127.0.0.1", ["search.example.org"])),
                      base_url="http://127.0.0.1:8000")  # fmt: skip


@pytest.fixture(scope="module")
def locked_app(shapes_db: Path) -> TestClient:
    return TestClient(app_for(shapes_db, token=TOKEN), base_url="http://localhost:8000")


def test_host_names_are_parsed_without_their_port() -> None:
    assert [host_name(h) for h in ("LocalHost:80", "[::1]:8000", "::1", "10.0.0.5", "")] == [
        "localhost", "::1", "::1", "10.0.0.5", ""
    ]  # fmt: skip
    assert "10.0.0.5" in allowed_hosts("10.0.0.5") and "0.0.0.0" not in allowed_hosts("0.0.0.0")


@pytest.mark.parametrize(
    ("host", "status"),
    [("127.0.0.1:8000", 200), ("localhost", 200), ("[::1]:8000", 200), ("search.example.org", 200),
     ("evil.example", 421), ("127.0.0.1.evil.example", 421), ("", 421)],
)  # fmt: skip
def test_only_requests_for_allowed_hosts_are_answered(open_app: TestClient, host: str, status: int) -> None:
    response = open_app.get("/api/stats", headers={"host": host})
    assert response.status_code == status, response.text
    if status == 421:  # a rebound name gets nothing of the table
        assert set(response.json()) == {"error"} and "rows" not in response.text


def test_any_host_when_asked(shapes_db: Path) -> None:
    anyone = TestClient(app_for(shapes_db, hosts=allowed_hosts("0.0.0.0", ["*"])), base_url="http://x.y")
    assert anyone.get("/healthz").status_code == 200


def test_a_token_is_required_by_header_query_or_cookie(locked_app: TestClient) -> None:
    assert locked_app.get("/healthz").status_code == 200  # liveness probes need no secret
    for path in (
        "/",
        "/api/stats",
        "/api/search?q=x",
        "/docs",
        "/openapi.json",
        "/api/thumbnail/" + "0" * 32,
    ):
        refused = locked_app.get(path)
        assert refused.status_code == 401 and refused.json() == {"error": "a token is required"}, path
        assert refused.headers["www-authenticate"] == "Bearer"
    assert locked_app.get("/api/stats", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert locked_app.get("/api/stats", headers={"authorization": f"Bearer {TOKEN}"}).json()["rows"] == 98

    browser = TestClient(locked_app.app, base_url="http://localhost:8000")
    page = browser.get(f"/?token={TOKEN}")
    assert page.status_code == 200 and "HttpOnly" in page.headers["set-cookie"]
    assert "SameSite=Strict" in page.headers["set-cookie"]
    assert browser.get("/api/stats").status_code == 200  # the cookie carries it from now on


def test_security_headers_and_a_page_policy_without_unsafe_inline(open_app: TestClient) -> None:
    page = open_app.get("/")
    policy = page.headers["content-security-policy"]
    assert "'unsafe-inline'" not in policy and "'unsafe-eval'" not in policy
    assert "frame-ancestors 'none'" in policy and re.search(r"script-src 'sha256-[A-Za-z0-9+/=]{44}'", policy)
    for response in (page, open_app.get("/api/stats"), open_app.get("/api/search", params={"k": 0})):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
    assert open_app.get("/api/stats").headers["content-security-policy"].startswith("default-src 'none'")


def test_one_access_log_line_per_request_without_the_token(
    locked_app: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="mmindex.access"):
        locked_app.get("/api/stats", params={"token": TOKEN})
        locked_app.get("/api/search", params={"q": "a red star", "k": 0}, headers={"host": "evil.example"})
    lines = [record.getMessage() for record in caplog.records if record.name == "mmindex.access"]
    assert len(lines) == 2 and all(TOKEN not in line for line in lines)
    assert re.fullmatch(r'\S+ "GET /api/stats\?token=%2A%2A%2A" 200 \d+ B \d+\.\d ms', lines[0]), lines[0]
    assert '"GET /api/search?q=a+red+star&k=0" 421 ' in lines[1]


@pytest.fixture(scope="module")
def public_server(shapes_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`mmindex serve --host 0.0.0.0` as a user starts it: (URL on loopback, its output so far)."""
    log = tmp_path_factory.mktemp("public") / "server.log"
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "mmindex.cli", "serve", "--db", str(shapes_db), "--host", "0.0.0.0",
         "--port", str(port)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, "MMINDEX_DEVICE": "cpu"},
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(url + "/healthz", timeout=120)
        deadline = time.monotonic() + 30
        while "serving" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        yield url, log
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serving_every_interface_requires_a_made_up_token(
    public_server: tuple[str, Path], cli: CliRunner
) -> None:
    url, log = public_server
    output = log.read_text()
    assert "warning: listening on 0.0.0.0" in output and "--allow-host" in output
    token = re.search(r"\?token=([A-Za-z0-9_-]{20,})", output)
    assert token, output
    assert httpx.get(url + "/api/stats").status_code == 401
    assert httpx.get(url + "/api/stats", headers={"authorization": f"Bearer {token[1]}"}).status_code == 200

    found = cli("search", "a blue star", "-k", "2", "--json", "--server", url, env={
        "MMINDEX_SERVER_TOKEN": token[1]})  # fmt: skip
    assert found.returncode == 0 and '"key"' in found.stdout, found.stderr
    refused = cli("search", "a blue star", "--server", url)
    assert refused.returncode == 2 and "refused the query (401): a token is required" in refused.stderr
    assert re.search(r'"GET /api/search\?k=2&offset=0&synthetic=include&q=a\+blue\+star&mode=vector" 200 ',
                     log.read_text())  # fmt: skip
