"""`mmindex search --server URL`: the same query sent to a running `mmindex serve`, standard library
only, so the command answers in a fraction of a second (no torch, no model load)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from mmindex.errors import ConfigError
from mmindex.query.request import SearchRequest
from mmindex.query.results import HIT_FIELDS

TIMEOUT_SECONDS = 60.0


def search_remote(server: str, search: SearchRequest, *, token: str | None = None) -> list[dict[str, Any]]:
    """The hits of `search`, as `mmindex search --json` prints them locally. `token` is the server's
    shared secret, if it requires one."""
    base = server.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ConfigError(f"--server {server!r} must be an http:// or https:// URL")
    params = search.to_params()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    image = search.image
    if image is not None and not isinstance(image, str | Path):
        raise ConfigError("a search server takes a query image from a file: give its path")
    image = Path(image) if image is not None else None
    if image is not None:
        try:
            data = image.expanduser().read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read query image {image}: {exc.strerror or exc}") from exc
        body, content_type = _multipart("image", image.name, data)
        request = urllib.request.Request(
            f"{base}/api/search?{urllib.parse.urlencode(params)}",
            data=body,
            headers={**headers, "Content-Type": content_type},
            method="POST",
        )
    else:
        request = urllib.request.Request(
            f"{base}/api/search?{urllib.parse.urlencode(params)}", headers=headers
        )
    page = _call(request, base)
    return [{name: hit.get(name) for name in HIT_FIELDS} for hit in page["hits"]]


def _call(request: urllib.request.Request, base: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error") or exc.reason
        except ValueError:
            message = exc.reason
        raise ConfigError(f"the server refused the query ({exc.code}): {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(f"cannot reach the mmindex server at {base}: {reason}") from None


def _multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    safe_name = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{safe_name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"
