"""The search server's app: a page, and a JSON API over one table, read only.

The table's model is loaded once, at start-up; model calls are serialised (one forward pass at a time
uses the cores best), concurrent text queries share one forward pass, concurrent vector searches
with the same page and filter share one LanceDB query (`coalesce`), and repeated text queries
(paging) reuse their embedding. Every read goes to the
table's newest version, so rows an index run commits while the server is up are searched at once.
Inputs from the network are checked: the body size is counted as it arrives (`limits.BodyLimit`),
filters must pass the grammar in `mmindex.query.filters`, query images are decoded with the
decompression-bomb guard and a pixel cap, and no endpoint reads anything but the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, File, Path, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from PIL import Image
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmindex.errors import ConfigError, DecodeError, MMIndexError, TableError
from mmindex.ingest.sources.base import SourceItem
from mmindex.ingest.sources.uri import UriReader
from mmindex.query.filters import check_filter
from mmindex.query.handle import ImageIndex, VectorPage
from mmindex.query.request import SEARCH_MODES, SYNTHETIC_CHOICES, SearchRequest
from mmindex.query.results import Results
from mmindex.server.coalesce import Coalescer
from mmindex.server.guard import (
    LOOPBACK_HOSTS,
    AccessLog,
    HostCheck,
    SecurityHeaders,
    TokenCheck,
    page_policy,
)
from mmindex.server.limits import BodyLimit

MAX_K = 200
MAX_OFFSET = 10_000
MAX_QUERY_LENGTH = 1000
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_QUERY_PIXELS = 50_000_000
UPLOAD_SLOTS = 2  # query images held in memory and decoded at once; the others wait their turn
TEXT_CACHE_SIZE = 256
PROBE_CAPTIONS = 64  # captions the int8 text tower is judged on at start-up
TEXT_INT8_CHOICES = ("auto", "off")
ROW_ID = re.compile(r"[0-9a-f]{32}")

K = Annotated[int, Query(ge=1, le=MAX_K, description="results per page")]
OFFSET = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="results to skip (paging)")]
WHERE = Annotated[
    str | None,
    Query(max_length=2000, description="filter: comparisons of columns with values, AND/OR/NOT"),
]
DISTINCT = Annotated[bool, Query(description="hide exact duplicates (same file content) of better hits")]
MIN_SCORE = Annotated[
    float | None,
    Query(ge=-1, le=1, description="only hits with at least this cosine score (vector searches)"),
]
ORDER_BY = Annotated[
    str | None,
    Query(
        max_length=100,
        description="order the relevant hits by a column: 'COLUMN', 'COLUMN asc' or 'COLUMN desc'",
    ),
]
SYNTHETIC = Annotated[
    str,
    Query(
        pattern="^(" + "|".join(SYNTHETIC_CHOICES) + ")$",
        description="generated images: include, exclude or only",
    ),
]

GENERATION = Annotated[
    str | None,
    Query(max_length=48, description="an embedding generation to search (default: the active one)"),
]
THUMBNAILS = Annotated[
    bool, Query(description="give each hit the address of its thumbnail (null when it has none)")
]


@dataclass(frozen=True)
class Page:
    """What every search route takes besides its query: which page of which results."""

    k: K = 20
    offset: OFFSET = 0
    where: WHERE = None
    distinct: DISTINCT = False
    synthetic: SYNTHETIC = "include"
    min_score: MIN_SCORE = None
    order_by: ORDER_BY = None
    thumbnails: THUMBNAILS = False
    generation: GENERATION = None

    def request(self, **query: Any) -> SearchRequest:
        """The search request for this page and a query (`text=` and `mode=`, or `vector=`)."""
        return SearchRequest(
            **query,
            k=self.k,
            offset=self.offset,
            where=self.where,
            synthetic=self.synthetic,
            distinct=self.distinct,
            min_score=self.min_score,
            order_by=self.order_by,
            generation=self.generation,
            columns=("thumbnail",) if self.thumbnails else (),
        )


PAGE = Annotated[Page, Depends()]
FIRST_PAGE = Page()


class ErrorBody(BaseModel):
    """What every refused request gets back."""

    error: str = Field(description="what was wrong, in one line")


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "a filter or value the table cannot answer"},
    404: {"model": ErrorBody, "description": "no such row"},
    422: {"model": ErrorBody, "description": "a parameter or upload out of bounds"},
}
UPLOAD_ERRORS = {**ERRORS, 413: {"model": ErrorBody, "description": "the upload is over the size cap"}}


class SearchService:
    """The model, the table and the caches behind the routes."""

    def __init__(self, index: ImageIndex) -> None:
        self.index = index
        self._model_lock = threading.Lock()
        # a text query embeds and searches in one batch: clients then travel as one group, and the
        # batches stay large (two stages in turn split 8 clients into batches of about 2)
        self._text_searches: Coalescer[VectorPage, str, Results] = Coalescer(self._search_texts)
        self._searches: Coalescer[VectorPage, np.ndarray, Results] = Coalescer(self._search_vectors)
        self._cache_lock = threading.Lock()
        self._vectors: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()

    def warm(self, text_int8: str = "auto") -> None:
        """Load the model, learn the table's constant columns, choose how text queries run
        (`text_int8`: "auto" tries an int8 text tower, judged on the table's captions; "off" keeps
        the model's own mode) and run one query."""
        embedder = self.index.searcher.embedder
        self.index.searcher.learn_facts()
        if text_int8 == "auto":
            embedder.speed_up_text_queries(self.index.sample_captions(PROBE_CAPTIONS))
        self.text_vector("warm-up")

    def text_vector(self, text: str, generation: str | None = None) -> np.ndarray:
        """The text's embedding by the model of `generation` (None: the active one, followed across
        `mmindex activate`); repeated texts (paging) reuse it."""
        return self._text_vectors([text], generation)[0]

    def _text_vectors(self, texts: Sequence[str], generation: str | None) -> list[np.ndarray]:
        """The texts' embeddings: those in the cache reused, the others in one forward pass."""
        searcher = self.index.searcher_for(generation)
        model = searcher.facts().generation(generation).model
        found: dict[str, np.ndarray] = {}
        with self._cache_lock:
            for text in texts:
                cached = self._vectors.get((model, text))
                if cached is not None:
                    self._vectors.move_to_end((model, text))
                    found[text] = cached
        missing = list(dict.fromkeys(text for text in texts if text not in found))
        if missing:
            encoder = searcher.embedder if searcher is self.index.searcher else searcher.text_encoder
            with self._model_lock:
                vectors = encoder.embed_texts(missing)
            with self._cache_lock:
                for text, vector in zip(missing, vectors, strict=True):
                    self._vectors[(model, text)] = found[text] = vector
                while len(self._vectors) > TEXT_CACHE_SIZE:
                    self._vectors.popitem(last=False)
        return [found[text] for text in texts]

    def nearest_text(self, text: str, page: VectorPage) -> Results:
        """Images nearest a text; concurrent queries with the same page share one forward pass of
        the text tower and one multi-vector LanceDB query."""
        return self._text_searches(page, text)

    def _search_texts(self, page: VectorPage, texts: list[str]) -> list[Results]:
        return self._search_vectors(page, self._text_vectors(texts, page.generation))

    def nearest(
        self, vector: np.ndarray | Sequence[float], page: VectorPage, query: str = "vector"
    ) -> Results:
        """Images nearest a query vector; concurrent queries with the same page are answered by one
        multi-vector LanceDB query."""
        return self._searches(page, np.asarray(vector, dtype=np.float32))

    def _search_vectors(self, page: VectorPage, vectors: list[np.ndarray]) -> list[Results]:
        return self.index.searcher_for(page.generation).vectors(
            vectors,
            page.k,
            page.where,
            offset=page.offset,
            exclude=page.exclude,
            relevance=page.relevance,
            columns=page.columns,
        )

    def image_vector(self, data: bytes) -> np.ndarray:
        check_query_image(data)
        with self._model_lock:
            return self.index.searcher.embed_image(data)

    def where(self, where: str | None) -> str | None:
        if where is None or not where.strip():
            return None
        return check_filter(where, self.index.searcher.facts().small_columns)

    def search(
        self, request: SearchRequest, *, exclude: str | None = None, hidden_digest: str | None = None
    ) -> Results:
        """One page of results for a request from a client: its filter checked against the untrusted
        grammar, then answered as every search is (ImageIndex.execute), with this service batching
        concurrent text embeddings and vector searches."""
        checked = replace(request, where=self.where(request.where))
        with self._model_lock if request.mode == "hybrid" else contextlib.nullcontext():  # hybrid embeds
            return self.index.execute(checked, engine=self, exclude=exclude, hidden_digest=hidden_digest)


def check_query_image(data: bytes) -> None:
    """Refuse images whose header announces more pixels than a query needs (before decoding them)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except Exception as exc:  # any failure to read a header is the upload's fault
        raise DecodeError("not an image this server can read (JPEG, PNG, WebP, GIF, BMP or TIFF)") from exc
    if width * height > MAX_QUERY_PIXELS:
        raise DecodeError(
            f"the image is {width}x{height} pixels; query images are limited to {MAX_QUERY_PIXELS}"
        )


def hit_json(results: Results, thumbnails: bool) -> list[dict[str, Any]]:
    """The hits as JSON; with `thumbnails`, each with the address of its thumbnail (or null)."""
    if not thumbnails:
        return results.to_list()
    table = results.to_arrow()
    has_thumbnail = (
        table.column("thumbnail").is_valid().to_pylist()
        if "thumbnail" in table.column_names
        else [False] * len(results)
    )
    return [
        {**hit.to_dict(), "thumbnail": f"/api/thumbnail/{hit.id}" if present else None}
        for hit, present in zip(results, has_thumbnail, strict=True)
    ]


def page_json(results: Results, *, mode: str, page: Page, query: str) -> dict[str, Any]:
    return {
        "query": query,
        "mode": mode,
        "score_kind": results.score_kind,
        "k": page.k,
        "offset": page.offset,
        "hits": hit_json(results, page.thumbnails),
    }


def create_app(
    index: ImageIndex,
    *,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    warm: bool = True,
    text_int8: str = "auto",
    hosts: frozenset[str] = frozenset(LOOPBACK_HOSTS),
    token: str | None = None,
) -> Any:
    """The ASGI app serving `index`: the FastAPI app inside the request guards (`guard`, `limits`).
    `warm` loads the model now rather than at the first query; `text_int8` is `SearchService.warm`'s;
    only requests for `hosts` are answered, and with a `token` only those that carry it."""
    if text_int8 not in TEXT_INT8_CHOICES:
        raise ConfigError(f"text_int8 must be one of {', '.join(TEXT_INT8_CHOICES)}, got {text_int8!r}")
    service = SearchService(index)
    if warm:
        service.warm(text_int8)
    app = FastAPIOffline(
        title="mmindex search",
        version="1",
        description=f"Read-only search over the table {index.store.describe()}.",
    )
    _add_error_handlers(app)
    upload_slots = asyncio.Semaphore(UPLOAD_SLOTS)
    page = resources.files("mmindex.server").joinpath("static/index.html").read_text(encoding="utf-8")
    originals = functools.cache(UriReader)  # S3 settings from the environment, as the index run had

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/healthz", summary="liveness: the table is readable")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "rows": len(index)}

    @app.get("/api/table", summary="which table this server answers for (cheap: no counting)")
    def which_table() -> dict[str, Any]:
        return {"db": index.store.db_uri, "table": index.store.table_name}

    @app.get("/api/stats", summary="rows, captions by source, model, indices")
    def stats() -> dict[str, Any]:
        loaded = index.searcher.loaded_embedder
        return {**index.stats(), "text_queries": loaded.text_compute if loaded is not None else None}

    @app.get(
        "/api/search",
        responses=ERRORS,
        summary="text query: CLIP (mode=vector), BM25 (text) or both (hybrid)",
    )
    def search_text(
        q: Annotated[str, Query(min_length=1, max_length=MAX_QUERY_LENGTH)],
        page: PAGE,
        mode: Annotated[str, Query(pattern="^(" + "|".join(SEARCH_MODES) + ")$")] = "vector",
    ) -> dict[str, Any]:
        found = service.search(page.request(text=q, mode=mode))
        return page_json(found, mode=mode, page=page, query=q)

    @app.post(
        "/api/search", responses=UPLOAD_ERRORS, summary="image query: the image as multipart field `image`"
    )
    async def search_image(
        image: Annotated[UploadFile, File(description="the query image (JPEG, PNG, WebP, ...)")],
        page: PAGE,
    ) -> dict[str, Any]:
        async with upload_slots:  # bounds memory: the body waits on disk (spooled) until its turn
            data = await image.read()
            if not data:
                raise DecodeError("the uploaded image is empty")
            vector = await run_in_threadpool(service.image_vector, data)  # keep the event loop free
            del data
        found = await run_in_threadpool(service.search, page.request(vector=vector))
        return page_json(found, mode="image", page=page, query=image.filename or "image")

    @app.get(
        "/api/similar/{row_id}",
        responses=ERRORS,
        summary='"more like this": the images nearest an indexed one',
    )
    def similar(row_id: Annotated[str, Path(max_length=64)], page: PAGE) -> dict[str, Any]:
        queried = index.searcher_for(page.generation)
        vector = index.embedding(
            _checked_id(row_id), queried.facts().generation(page.generation).image_column
        )
        digest = index.row(row_id, ["sha256"]).get("sha256") if page.distinct else None
        found = service.search(page.request(vector=vector), exclude=row_id, hidden_digest=digest)
        return page_json(found, mode="similar", page=page, query=row_id)

    @app.get(
        "/api/thumbnail/{row_id}", responses=ERRORS, summary="the stored thumbnail of a row (WebP or JPEG)"
    )
    def thumbnail(row_id: Annotated[str, Path(max_length=64)]) -> Response:
        data = index.thumbnail(_checked_id(row_id))
        if data is None:
            return JSONResponse({"error": "this row has no thumbnail"}, status_code=404)
        mime = "image/webp" if data[8:12] == b"WEBP" else "image/jpeg"
        return Response(data, media_type=mime, headers={"Cache-Control": "max-age=300"})

    @app.get("/api/row/{row_id}", responses=ERRORS, summary="a row's stored columns (no vectors, no preview)")
    def row(row_id: Annotated[str, Path(max_length=64)]) -> dict[str, Any]:
        columns = index.searcher.facts().small_columns
        found = index.row(_checked_id(row_id), columns)
        return {name: _json_value(found.get(name)) for name in columns}

    @app.get(
        "/api/original/{row_id}",
        responses=ERRORS,
        summary="a row's original image, read from the row's own uri (never from a path given here)",
    )
    def original(row_id: Annotated[str, Path(max_length=64)]) -> Response:
        found = index.row(_checked_id(row_id), ["uri", "key", "size", "version", "format"])
        item = SourceItem(
            uri=found["uri"], key=found["key"], size=found["size"] or 0, version=found["version"] or ""
        )
        try:
            data = originals().read(item)
        except MMIndexError as exc:
            return JSONResponse({"error": f"the original cannot be read: {exc}"}, status_code=404)
        media = ORIGINAL_TYPES.get(str(found.get("format") or "").upper(), "application/octet-stream")
        return Response(data, media_type=media, headers={"Cache-Control": "max-age=300"})

    @app.get("/api/examples", responses=ERRORS, summary="a few of the table's captions, to start from")
    def examples(n: Annotated[int, Query(ge=1, le=20)] = 6) -> dict[str, Any]:
        captions = list(dict.fromkeys(index.sample_captions(n * 4)))[:n]
        return {"captions": captions}

    guarded: Any = BodyLimit(app, max_upload_bytes)
    if token:
        guarded = TokenCheck(guarded, token)
    return AccessLog(SecurityHeaders(HostCheck(guarded, hosts), page_policy(page)))


ORIGINAL_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}


def _json_value(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


def _checked_id(row_id: str) -> str:
    if not ROW_ID.fullmatch(row_id):
        raise TableError(f"no row with id {row_id!r}")
    return row_id


def _add_error_handlers(app: FastAPI) -> None:
    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(DecodeError)
    async def bad_image(request: Request, exc: DecodeError) -> JSONResponse:
        return error(422, str(exc))

    @app.exception_handler(TableError)
    async def bad_table_request(request: Request, exc: TableError) -> JSONResponse:
        return error(404 if str(exc).startswith("no row") else 400, str(exc))

    @app.exception_handler(MMIndexError)
    async def bad_request(request: Request, exc: MMIndexError) -> JSONResponse:
        return error(400 if isinstance(exc, ConfigError) else 500, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem.get('loc', ())[1:]) or 'request'}: {problem.get('msg')}"
            for problem in exc.errors()
        )
        return error(422, problems or "invalid request")
