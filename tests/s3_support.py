"""S3 test fixtures: a local moto_server, fresh buckets, generated corpora and a fault-injecting proxy.

Everything listens on 127.0.0.1 only and stops at teardown. AWS variables get test values for the
session (and a developer's ~/.aws files are hidden) without touching the environment outside tests.

    s3_endpoint     session: "http://127.0.0.1:PORT" of a moto_server (any credentials accepted)
    s3_bucket       function: a fresh, empty bucket (S3Bucket: name, client, endpoint, helpers)
    s3_auth         session: a second moto_server that enforces credentials (IAM users and keys)
    faulty_proxy    function: factory of FaultyProxy(upstream endpoint, faults) in front of moto
    upload_corpus   helper: generated shape images + .txt/.json sidecars uploaded under a prefix
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from mmindex.ingest.sources.s3 import S3Config

TEST_ACCESS_KEY = "mmindex-test-access-key"
TEST_SECRET_KEY = "mmindex-test-secret-key-never-printed"
TEST_REGION = "us-east-1"

_AWS_VARIABLES_TO_HIDE = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "MMINDEX_S3_ENDPOINT",
    "MMINDEX_S3_REGION",
    "MMINDEX_S3_PROFILE",
)


# -- servers ----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def moto_command(port: int) -> list[str]:
    """moto_server next to this interpreter, else `python -m moto.server`."""
    script = Path(sys.executable).with_name("moto_server")
    head = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    return [*head, "-H", "127.0.0.1", "-p", str(port)]


class MotoServer:
    """A moto_server subprocess on a free loopback port."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(moto_command(self.port), stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_until_up()

    def _wait_until_up(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.process.returncode}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/data.json", timeout=2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.endpoint} within {timeout} s")

    def enforce_auth(self) -> None:
        """From now on every request must be signed by a known IAM access key (moto's reset-auth)."""
        request = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth",
            data=b"0",
            method="POST",
            headers={"Content-Type": "text/plain"},
        )  # a form content type would leave moto an empty body
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self._log.close()


def s3_client(endpoint: str, **credentials: str) -> Any:
    """A plain boto3 client for setting up fixtures (not the code under test)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=TEST_REGION,
        config=Config(max_pool_connections=32, retries={"mode": "standard", "max_attempts": 3}),
        **credentials,
    )


@pytest.fixture(scope="session")
def aws_test_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Test credentials and region for the session; a developer's AWS profile, files and endpoint hidden."""
    home = tmp_path_factory.mktemp("aws-home")
    patch = pytest.MonkeyPatch()
    for name in _AWS_VARIABLES_TO_HIDE:
        patch.delenv(name, raising=False)
    patch.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY)
    patch.setenv("AWS_SECRET_ACCESS_KEY", TEST_SECRET_KEY)
    patch.setenv("AWS_DEFAULT_REGION", TEST_REGION)
    patch.setenv("AWS_CONFIG_FILE", str(home / "config"))
    patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
    patch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask 169.254.169.254 for credentials
    yield
    patch.undo()


@pytest.fixture(scope="session")
def s3_endpoint(aws_test_env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a moto_server shared by the session (accepts any credentials)."""
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server.endpoint
    server.stop()


@dataclass
class S3Bucket:
    """A bucket on the test server, with a setup client that talks to moto directly."""

    name: str
    client: Any
    endpoint: str

    def uri(self, key: str = "") -> str:
        return f"s3://{self.name}/{key}"

    def put(self, key: str, body: bytes) -> str:
        """Upload `body`; returns the new ETag without quotes."""
        return str(self.client.put_object(Bucket=self.name, Key=key, Body=body)["ETag"]).strip('"')

    def put_many(self, objects: dict[str, bytes], threads: int = 8) -> None:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda pair: self.put(*pair), objects.items()))

    def etag(self, key: str) -> str:
        return str(self.client.head_object(Bucket=self.name, Key=key)["ETag"]).strip('"')

    def config(self, endpoint: str | None = None, **overrides: Any) -> S3Config:
        """An S3Config for the code under test, pointed at moto (or at a proxy in front of it)."""
        return replace(S3Config(endpoint_url=endpoint or self.endpoint), **overrides)


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> S3Bucket:
    """A fresh bucket per test; moto keeps it in memory until the server stops."""
    name = f"mm-{uuid.uuid4().hex[:16]}"
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket=name)
    return S3Bucket(name, client, s3_endpoint)


@dataclass(frozen=True)
class CorpusObject:
    """One uploaded image: its bytes, its caption (if it has a sidecar) and the sidecar's key."""

    data: bytes
    caption: str | None
    sidecar_key: str | None


def upload_corpus(
    bucket: S3Bucket, workdir: Path, *, prefix: str = "", count: int = 24, seed: int = 3, json_every: int = 3
) -> dict[str, CorpusObject]:
    """Generate shapes with mmindex.toy.shapes.write_corpus and upload them with their sidecars; every
    `json_every`-th caption goes in a `.json` sidecar instead of `.txt`. Returns key -> CorpusObject,
    keys relative to `prefix`."""
    from mmindex.toy.shapes import write_corpus

    written = write_corpus(workdir, count, seed=seed)
    objects: dict[str, bytes] = {}
    corpus: dict[str, CorpusObject] = {}
    for index, (path, spec, captioned) in enumerate(written):
        key = path.relative_to(workdir).as_posix()
        objects[prefix + key] = path.read_bytes()
        sidecar_key = None
        if captioned:
            if index % json_every == 0:
                sidecar_key = key.rsplit(".", 1)[0] + ".json"
                objects[prefix + sidecar_key] = json.dumps({"caption": spec.caption}).encode()
            else:
                sidecar_key = key.rsplit(".", 1)[0] + ".txt"
                objects[prefix + sidecar_key] = path.with_suffix(".txt").read_bytes()
        corpus[key] = CorpusObject(path.read_bytes(), spec.caption if captioned else None, sidecar_key)
    bucket.put_many(objects)
    return corpus


# -- buckets behind enforced credentials ------------------------------------------------------------


@dataclass(frozen=True)
class AuthS3:
    """A moto_server that checks signatures, a bucket with one object, and profiles in a credentials
    file: `reader` (may read), `nobody` (valid key, no permissions), `wrong-secret`, `unknown-key`."""

    endpoint: str
    bucket: str
    credentials_file: Path
    secrets: tuple[str, ...]


@pytest.fixture(scope="session")
def s3_auth(aws_test_env: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthS3]:
    workdir = tmp_path_factory.mktemp("moto-auth")
    server = MotoServer(workdir / "moto.log")
    try:
        iam = boto3.client("iam", endpoint_url=server.endpoint, region_name=TEST_REGION)
        keys = {}
        for user, allowed in (("reader", True), ("nobody", False)):
            iam.create_user(UserName=user)
            if allowed:
                policy = {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
                }
                iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
            keys[user] = iam.create_access_key(UserName=user)["AccessKey"]
        bucket = "mm-auth"
        client = s3_client(server.endpoint)
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="photos/a.jpg", Body=b"\xff\xd8\xff not really a jpeg")
        server.enforce_auth()
        reader, nobody = keys["reader"], keys["nobody"]
        profiles = {
            "reader": (reader["AccessKeyId"], reader["SecretAccessKey"]),
            "nobody": (nobody["AccessKeyId"], nobody["SecretAccessKey"]),
            "wrong-secret": (reader["AccessKeyId"], "wrong-secret-" + "x" * 27),
            "unknown-key": ("AKIAUNKNOWNUNKNOWN00", "unknown-secret-" + "y" * 25),
        }
        credentials_file = workdir / "credentials"
        credentials_file.write_text(
            "".join(
                f"[{name}]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n\n"
                for name, (key_id, secret) in profiles.items()
            )
        )
        yield AuthS3(server.endpoint, bucket, credentials_file, tuple(s for _, s in profiles.values()))
    finally:
        server.stop()


# -- a proxy that misbehaves ------------------------------------------------------------------------

SLOW_DOWN = "slow_down"
DROP = "drop"
TRUNCATE = "truncate"
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
}
_SLOW_DOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>MMINDEXTEST</RequestId></Error>"
)


@dataclass
class Faults:
    """What the proxy does wrong. Probabilities apply per request among those `applies` accepts;
    `max_in_a_row` keeps random faults transient (after that many faults in a row on one method+path
    the next request goes through); `always` maps a path to a fault injected on every request."""

    slow_down: float = 0.0
    drop: float = 0.0
    truncate: float = 0.0
    max_in_a_row: int | None = 3
    applies: Callable[[str, str, str], bool] = lambda method, path, query: True
    always: dict[str, str] = field(default_factory=dict)
    seed: int = 0


class FaultyProxy:
    """A threaded HTTP proxy on 127.0.0.1 between a client and an upstream S3 endpoint. It forwards
    requests, injects faults (503 SlowDown with an S3 error body, a connection dropped before the answer,
    a body cut short) and counts requests by method and path."""

    def __init__(self, upstream: str, faults: Faults | None = None) -> None:
        host_port = upstream.split("://", 1)[1].rstrip("/")
        self.upstream_host, _, port = host_port.partition(":")
        self.upstream_port = int(port or 80)
        self.faults = faults or Faults()
        self.requests: list[tuple[str, str, str]] = []  # (method, path, query)
        self.injected: Counter[str] = Counter()
        self._in_a_row: Counter[tuple[str, str]] = Counter()
        self._random = random.Random(self.faults.seed)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="faulty-proxy", daemon=True)
        self._thread.start()

    def decide(self, method: str, path: str, query: str) -> str | None:
        """Record the request and pick its fault (or None)."""
        with self._lock:
            self.requests.append((method, path, query))
            fault = self.faults.always.get(path)
            if fault is None and self.faults.applies(method, path, query):
                fault = self._random_fault(method, path)
            if fault is not None:
                self.injected[fault] += 1
                self._in_a_row[(method, path)] += 1
            else:
                self._in_a_row.pop((method, path), None)
            return fault

    def _random_fault(self, method: str, path: str) -> str | None:
        limit = self.faults.max_in_a_row
        if limit is not None and self._in_a_row[(method, path)] >= limit:
            return None
        draw = self._random.random()
        for fault, probability in (
            (SLOW_DOWN, self.faults.slow_down),
            (DROP, self.faults.drop),
            (TRUNCATE, self.faults.truncate if method == "GET" else 0.0),
        ):
            if draw < probability:
                return fault
            draw -= probability
        return None

    def count(self, method: str | None = None, *, path: str | None = None, query: str | None = None) -> int:
        """Requests seen with this method, exact path, and a query containing `query`."""
        with self._lock:
            return sum(
                1
                for m, p, q in self.requests
                if (method is None or m == method)
                and (path is None or p == path)
                and (query is None or query in q)
            )

    def list_requests(self, bucket: str) -> int:
        return self.count("GET", path=f"/{bucket}", query="list-type=2") + self.count(
            "GET", path=f"/{bucket}/", query="list-type=2"
        )

    def object_gets(self, bucket: str) -> int:
        """GETs of objects (not listings) in `bucket`."""
        with self._lock:
            return sum(
                1
                for m, p, _ in self.requests
                if m == "GET" and p.startswith(f"/{bucket}/") and p != f"/{bucket}/"
            )

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def _handler_for(proxy: FaultyProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            return  # keep test output clean; the proxy counts requests instead

        def do_GET(self) -> None:
            self._relay()

        do_HEAD = do_PUT = do_POST = do_DELETE = do_GET

        def _relay(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            path, _, query = self.path.partition("?")
            fault = proxy.decide(self.command, path, query)
            if fault == DROP:
                self.close_connection = True
                return
            if fault == SLOW_DOWN:
                self._answer(503, "Slow Down", [("Content-Type", "application/xml")], _SLOW_DOWN_BODY)
                return
            status, reason, headers, data = self._forward(body)
            if fault == TRUNCATE and len(data) > 1:
                self._answer(status, reason, headers, data, cut_at=len(data) // 2)
                return
            self._answer(status, reason, headers, data)

        def _forward(self, body: bytes | None) -> tuple[int, str, list[tuple[str, str]], bytes]:
            upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                upstream.request(self.command, self.path, body=body, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                return response.status, response.reason, response.getheaders(), data
            finally:
                upstream.close()

        def _answer(
            self,
            status: int,
            reason: str,
            headers: list[tuple[str, str]],
            data: bytes,
            cut_at: int | None = None,
        ) -> None:
            self.send_response_only(status, reason)
            for name, value in headers:
                lowered = name.lower()
                if lowered in _HOP_BY_HOP or (lowered == "content-length" and self.command != "HEAD"):
                    continue
                self.send_header(name, value)
            if self.command != "HEAD":
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command == "HEAD":
                return
            if cut_at is None:
                self.wfile.write(data)
                return
            self.wfile.write(data[:cut_at])
            self.wfile.flush()
            self.close_connection = True

    return Handler


@pytest.fixture
def faulty_proxy() -> Iterator[Callable[..., FaultyProxy]]:
    """Factory: faulty_proxy(upstream, Faults(...)) -> a running FaultyProxy; all stop at teardown."""
    proxies: list[FaultyProxy] = []

    def start(upstream: str, faults: Faults | None = None) -> FaultyProxy:
        proxy = FaultyProxy(upstream, faults)
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers (a hung endpoint)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield int(sock.getsockname()[1])
    sock.close()
