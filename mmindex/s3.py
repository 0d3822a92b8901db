"""The S3 client mmindex shares between sources, readers and LanceDB: configuration, retries,
reads, and errors worded in one credential-free line."""

from __future__ import annotations

import logging
import os
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from urllib3.exceptions import HTTPError as URLLib3HTTPError

from mmindex.config import Settings
from mmindex.errors import ConfigError, FetchError, SourceError

log = logging.getLogger(__name__)

LIST_PAGE_SIZE = 1000
MANIFEST_SPOOL_BYTES = 32 * 1024 * 1024  # larger manifests spill from memory to a temporary file
CHECK_MAX_ATTEMPTS = 2  # check() must answer in seconds, even against an endpoint that never replies
CHECK_CONNECT_TIMEOUT = 2.0
CHECK_READ_TIMEOUT = 3.0
# LanceDB (object_store) on S3: retry quick failures (503, resets) within 10 s, but never wait out a hung
# request twice. Its own outer loop multiplies this about 6x: a hung endpoint fails in ~60 s (measured;
# 725 s with the defaults), a refused port in ~2 s. A request (e.g. one 5 MiB upload part) gets 10 s.
LANCE_REQUEST_TIMEOUT = "10s"
LANCE_MAX_RETRIES = 3
LANCE_RETRY_TIMEOUT_S = 10

_BODY_ERRORS = (BotoCoreError, URLLib3HTTPError, OSError)  # a body cut short, reset or stalled
_DENIED_CODES = {"AccessDenied", "AllAccessDisabled", "AccountProblem"}
_TOKEN_CODES = {"ExpiredToken", "InvalidToken", "TokenRefreshRequired"}
_REGION_CODES = {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}


@dataclass(frozen=True)
class S3Config:
    """How to reach S3. None means "as boto3 decides": AWS_ENDPOINT_URL, AWS_PROFILE, AWS_REGION, the
    default credential chain. `fetch_concurrency` is how many concurrent reads a source invites."""

    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    max_attempts: int = 5  # botocore standard mode: about 15 s of backoff before an object is given up
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    fetch_concurrency: int = 16

    def __post_init__(self) -> None:
        if self.endpoint_url is not None and urlsplit(self.endpoint_url).scheme not in ("http", "https"):
            raise ConfigError(
                f"S3 endpoint {_redact_url(self.endpoint_url)!r} is not an http(s) URL; "
                "set MMINDEX_S3_ENDPOINT to e.g. http://127.0.0.1:9000"
            )
        if self.max_attempts < 1 or self.fetch_concurrency < 1:
            raise ConfigError("S3 max_attempts and fetch_concurrency must be at least 1")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ConfigError("S3 connect_timeout and read_timeout must be positive")

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Config:
        """From MMINDEX_S3_ENDPOINT / MMINDEX_S3_REGION / MMINDEX_S3_PROFILE (via Settings)."""
        return cls(endpoint_url=settings.s3_endpoint, region=settings.s3_region, profile=settings.s3_profile)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, key) of `s3://bucket/key`; the key may be empty. The key is taken verbatim (no URL
    decoding), since S3 keys may hold `?`, `#` or `%`."""
    if not uri.startswith("s3://"):
        raise SourceError(f"{uri!r} is not an s3:// location; write s3://bucket/prefix")
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not bucket:
        raise SourceError(f"{uri!r} names no bucket; write s3://bucket/prefix")
    return bucket, key


# -- the client every source shares its habits with ---------------------------------------------------


class S3Objects:
    """One boto3 session and one thread-safe client, with the reads, listings and checks a source needs
    and errors translated into one-line, credential-free messages."""

    def __init__(self, config: S3Config) -> None:
        self.config = config
        self.session = _session(config)
        self.client = _client(
            self.session, config, config.max_attempts, config.connect_timeout, config.read_timeout
        )

    @property
    def endpoint(self) -> str:
        """The endpoint the client talks to, without any user:password part."""
        return _redact_url(str(self.client.meta.endpoint_url))

    def describe_endpoint(self) -> str:
        parts = [f"endpoint {self.endpoint}"]
        if self.client.meta.region_name:
            parts.append(f"region {self.client.meta.region_name}")
        if self.config.profile:
            parts.append(f"profile {self.config.profile}")
        return ", ".join(parts)

    def list_objects(
        self, bucket: str, prefix: str, page_size: int = LIST_PAGE_SIZE
    ) -> Iterator[dict[str, Any]]:
        """Every object under `prefix`, in key order, one page in memory at a time."""
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size})
        try:
            for page in pages:
                yield from page.get("Contents", ())
        except (ClientError, BotoCoreError) as exc:
            raise SourceError(f"listing s3://{bucket}/{prefix} failed: {self.explain(exc, bucket)}") from exc

    def check_listing(self, bucket: str, prefix: str, max_keys: int = 1) -> list[dict[str, Any]]:
        """One LIST of at most `max_keys` keys, with short timeouts; SourceError says what is wrong."""
        client = _client(
            self.session,
            self.config,
            CHECK_MAX_ATTEMPTS,
            min(self.config.connect_timeout, CHECK_CONNECT_TIMEOUT),
            min(self.config.read_timeout, CHECK_READ_TIMEOUT),
        )
        try:
            response = client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=max_keys)
        except (ClientError, BotoCoreError) as exc:
            raise SourceError(self.explain(exc, bucket)) from exc
        contents: list[dict[str, Any]] = response.get("Contents", [])
        return contents

    def get(
        self, bucket: str, key: str, etag: str | None = None, byte_range: tuple[int, int] | None = None
    ) -> bytes:
        """The object's bytes (or those of `byte_range`, both ends included), retrying a body that breaks
        off mid-stream. With `etag`, only that version (If-Match): the bytes then always belong to the
        version the item was listed with."""
        params: dict[str, str] = {"Bucket": bucket, "Key": key}
        if etag:
            params["IfMatch"] = f'"{etag}"'
        if byte_range is not None:
            params["Range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
        attempts = self.config.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                response = self.client.get_object(**params)
            except (ClientError, BotoCoreError) as exc:
                raise FetchError(self._fetch_reason(exc, bucket), retryable=True) from exc
            body = response["Body"]
            try:
                data: bytes = body.read()  # botocore checks the length against Content-Length
                return data
            except _BODY_ERRORS as exc:
                body.close()
                log.debug(
                    "s3://%s/%s: body broke off (%s), attempt %d/%d",
                    bucket,
                    key,
                    _short(exc),
                    attempt,
                    attempts,
                )
                if attempt == attempts:
                    raise FetchError(
                        f"the connection broke off while reading the object {attempts} times "
                        f"(last: {self.scrub(_short(exc))})",
                        retryable=True,
                    ) from None
                time.sleep(_backoff(attempt))
        raise AssertionError("unreachable")

    def head(self, bucket: str, key: str) -> dict[str, Any]:
        """The object's metadata; ClientError/BotoCoreError pass through for the caller to word."""
        response: dict[str, Any] = self.client.head_object(Bucket=bucket, Key=key)
        return response

    def download(self, bucket: str, key: str, what: str) -> IO[bytes]:
        """A seekable stream of a whole object (Parquet needs to seek), spilled to disk past 32 MiB."""
        spool = tempfile.SpooledTemporaryFile(max_size=MANIFEST_SPOOL_BYTES)  # noqa: SIM115 - caller closes
        try:
            self.client.download_fileobj(bucket, key, spool)
        except (ClientError, BotoCoreError) as exc:
            spool.close()
            if http_status(exc) == 404 or _code(exc) in ("NoSuchKey", "NoSuchBucket", "404"):
                raise SourceError(f"{what} s3://{bucket}/{key} does not exist") from exc
            raise SourceError(f"cannot read {what} s3://{bucket}/{key}: {self.explain(exc, bucket)}") from exc
        spool.seek(0)
        return spool  # type: ignore[return-value]  # SpooledTemporaryFile is an IO[bytes] in practice

    def explain(self, exc: BaseException, bucket: str) -> str:
        """One line for a failed request, naming the likely fix; never a credential."""
        if isinstance(exc, ClientError):
            return self.scrub(self._client_error_line(exc, bucket))
        if isinstance(exc, NoCredentialsError | PartialCredentialsError):
            return (
                "no usable AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                "or a profile with AWS_PROFILE / MMINDEX_S3_PROFILE"
            )
        if isinstance(exc, BotoConnectionError | HTTPClientError):
            return (
                f"cannot reach the S3 endpoint {self.endpoint} ({type(exc).__name__}); "
                "check MMINDEX_S3_ENDPOINT / AWS_ENDPOINT_URL and the network"
            )
        return self.scrub(_short(exc))

    def _client_error_line(self, exc: ClientError, bucket: str) -> str:
        code, status = _code(exc), http_status(exc)
        if code == "NoSuchBucket":
            return f"bucket {bucket!r} does not exist at {self.endpoint}; check the name and the endpoint"
        if code == "InvalidAccessKeyId":
            return (
                "the AWS access key id is unknown to the endpoint (InvalidAccessKeyId); check the credentials"
            )
        if code == "SignatureDoesNotMatch":
            return (
                "the AWS secret access key does not match the access key id (SignatureDoesNotMatch); "
                "check the credentials"
            )
        if code in _TOKEN_CODES:
            return f"the AWS session token is expired or invalid ({code}); refresh the credentials"
        if code in _REGION_CODES or status == 301:
            return f"bucket {bucket!r} is in another region ({code}); set MMINDEX_S3_REGION or AWS_REGION"
        if code in _DENIED_CODES or status == 403:
            return f"access denied ({code}): the credentials may not list or read bucket {bucket!r}"
        return f"S3 answered {code} (HTTP {status}): {_message(exc)}"

    def _fetch_reason(self, exc: BaseException, bucket: str) -> str:
        if isinstance(exc, ClientError):
            code, status = _code(exc), http_status(exc)
            if code in ("NoSuchKey", "404") or status == 404:
                return "the object no longer exists (deleted after it was listed)"
            if code == "InvalidObjectState":
                return "the object is archived (InvalidObjectState); restore it to index it"
            if code == "PreconditionFailed" or status == 412:
                return "the object changed after it was listed; the next run indexes the new version"
            if (status is not None and status >= 500) or code == "SlowDown":
                return f"S3 kept failing: {code} (HTTP {status}) after {self.config.max_attempts} attempts"
            return self.explain(exc, bucket)
        if isinstance(exc, BotoConnectionError | HTTPClientError):
            return f"cannot reach the S3 endpoint {self.endpoint} ({type(exc).__name__}) after retries"
        return self.explain(exc, bucket)

    def scrub(self, text: str) -> str:
        """`text` with the session's secret key and token (if they were ever loaded) masked."""
        credentials = self.session.get_credentials()  # resolved when the client was made: cached
        if credentials is None:
            return text
        try:
            frozen = credentials.get_frozen_credentials()
        except BotoCoreError:  # a refresh that fails now: nothing to mask that we could know of
            return text
        for secret in (frozen.secret_key, frozen.token):
            if secret and len(secret) >= 8:
                text = text.replace(secret, "***")
        return text


def _session(config: S3Config) -> Any:
    """One boto3 session per source: the profile (or AWS_PROFILE) and region, credentials its chain finds."""
    try:
        return boto3.Session(profile_name=config.profile, region_name=config.region)
    except ProfileNotFound:
        name = config.profile or os.environ.get("AWS_PROFILE", "")
        raise SourceError(
            f"AWS profile {name!r} is not configured; set MMINDEX_S3_PROFILE or AWS_PROFILE to one in "
            "~/.aws/config, or leave both unset"
        ) from None


def _client(
    session: Any, config: S3Config, attempts: int, connect_timeout: float, read_timeout: float
) -> Any:
    """A thread-safe S3 client: standard-mode retries (5xx, SlowDown, dropped connections, timeouts;
    `attempts` in all) and a connection pool large enough for `fetch_concurrency` readers."""
    botocore_config = Config(
        retries={"mode": "standard", "total_max_attempts": attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max(10, config.fetch_concurrency + 4),
        tcp_keepalive=True,
    )
    try:
        return session.client("s3", endpoint_url=config.endpoint_url, config=botocore_config)
    except (ValueError, BotoCoreError) as exc:
        raise SourceError(f"cannot set up an S3 client: {_short(exc)}") from exc


# -- LanceDB on S3 ----------------------------------------------------------------------------------


def lance_storage_options(config: S3Config | None = None) -> dict[str, str]:
    """LanceDB `storage_options` for an `s3://` database reached like the sources are: the same endpoint,
    region and (resolved, static) credentials, a short request timeout and few retries, so a dead
    endpoint fails in about a minute instead of twelve. Holds secrets: never log or store the result."""
    config = config or S3Config()
    objects = S3Objects(config)
    options: dict[str, str] = {}
    credentials = objects.session.get_credentials()
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        options["aws_access_key_id"] = frozen.access_key
        options["aws_secret_access_key"] = frozen.secret_key
        if frozen.token:
            options["aws_session_token"] = frozen.token
    endpoint = str(objects.client.meta.endpoint_url)
    if not _is_aws_endpoint(endpoint):
        options["endpoint"] = endpoint
        if endpoint.startswith("http://"):
            options["allow_http"] = "true"
    region = config.region or objects.session.region_name or objects.client.meta.region_name
    if region and region != "aws-global":
        options["region"] = region
    options["connect_timeout"] = f"{int(config.connect_timeout * 1000)}ms"
    options["timeout"] = LANCE_REQUEST_TIMEOUT
    options["client_max_retries"] = str(LANCE_MAX_RETRIES)
    options["client_retry_timeout"] = str(LANCE_RETRY_TIMEOUT_S)  # integer seconds; "30s" is ignored
    return options


# -- small helpers ----------------------------------------------------------------------------------


def strip_etag(etag: str) -> str:
    return etag.strip('"')


def aware_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", "")) or type(exc).__name__


def http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def _message(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    return " ".join(str(response.get("Error", {}).get("Message", "")).split()) or "no message"


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _backoff(attempt: int) -> float:
    """Full-jitter exponential backoff: up to 0.2 s, 0.4 s, 0.8 s, ... capped at 5 s."""
    return random.uniform(0, min(5.0, 0.1 * 2**attempt))


def _redact_url(url: str) -> str:
    """`url` without a user:password part."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _is_aws_endpoint(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    return host.endswith((".amazonaws.com", ".amazonaws.com.cn"))
