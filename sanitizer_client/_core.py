"""The one implementation behind ``Client`` and ``AsyncClient``.

Every API method is written once, as a generator that *yields* what it needs done —
:class:`Call` (one HTTP exchange, retried by the driver) or :class:`Sleep` — and receives the
:class:`Response`. ``client.py`` has two small drivers that execute those operations with
``httpx.Client`` + ``tenacity.Retrying`` or ``httpx.AsyncClient`` + ``tenacity.AsyncRetrying``;
nothing else differs between the sync and async clients.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx

from sanitizer_client.errors import (
    APIError,
    error_from_response,
)
from sanitizer_client.types import FileObject, Job, Page

T = TypeVar("T")

# ------------------------------------------------------------------ operations


@dataclass
class Upload:
    field: str
    filename: str
    path: Path
    content_type: str = "application/octet-stream"


@dataclass
class Call:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, Any] | None = None  # form fields sent with ``upload``
    upload: Upload | None = None
    headers: dict[str, str] = field(default_factory=dict)
    expect: Literal["json", "text", "download"] = "json"
    download_to: Path | None = None


@dataclass
class Sleep:
    seconds: float


@dataclass
class Response:
    status: int
    headers: httpx.Headers
    body: Any = None  # parsed JSON, text, or None for downloads
    sha256: str | None = None  # of the bytes written, for downloads


Op = Call | Sleep
Gen = Generator[Op, Any, T]

# ------------------------------------------------------------------ HTTP translation

_IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})  # 500/502/504: safe requests only


def request_kwargs(call: Call, upload_file: Any = None) -> dict[str, Any]:
    """Arguments of ``httpx.Client.build_request`` for a call (the upload already opened)."""
    kw: dict[str, Any] = {"params": _clean(call.params), "headers": call.headers}
    if call.json is not None:
        kw["json"] = call.json
    if call.data is not None:
        kw["data"] = _clean(call.data)
    if call.upload is not None:
        kw["files"] = {
            call.upload.field: (call.upload.filename, upload_file, call.upload.content_type)
        }
    return kw


def download_headers(resp: httpx.Response) -> httpx.Headers:
    """The final response's headers, plus the X-Content-SHA256 the API sent on a redirect to
    a pre-signed URL (the object store's answer does not carry it)."""
    headers = httpx.Headers(resp.headers)
    for hop in resp.history:
        if "x-content-sha256" in hop.headers and "x-content-sha256" not in headers:
            headers["x-content-sha256"] = hop.headers["x-content-sha256"]
    return headers


def resume_state(path: Path | None) -> tuple[int, Any]:
    """Bytes already downloaded to ``path`` (a retry after a broken transfer) and a sha256
    fed with them, so the resumed download is hashed whole."""
    import hashlib

    h = hashlib.sha256()
    if path is None or not path.exists():
        return 0, h
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return path.stat().st_size, h


def _clean(d: dict[str, Any] | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {k: v for k, v in d.items() if v is not None}


def parse_body(headers: httpx.Headers, content: bytes) -> Any:
    ctype = headers.get("content-type", "")
    if not content:
        return None
    if "json" in ctype:
        try:
            return json.loads(content)
        except ValueError:
            return content.decode("utf-8", "replace")
    return content.decode("utf-8", "replace")


def raise_for_status(status: int, headers: httpx.Headers, content: bytes) -> None:
    if status < 400:
        return
    body = parse_body(headers, content)
    text = body if isinstance(body, str) else ""
    raise error_from_response(status, headers, body if isinstance(body, dict) else None, text)


def build_response(call: Call, status: int, headers: httpx.Headers, content: bytes) -> Response:
    raise_for_status(status, headers, content)
    if call.expect == "text":
        return Response(status, headers, content.decode("utf-8", "replace"))
    return Response(status, headers, parse_body(headers, content))


# ------------------------------------------------------------------ retry policy


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; ``Retry-After`` from the server wins when present."""

    max_retries: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 8.0
    max_retry_after: float = 60.0  # a longer Retry-After is not waited for: the error surfaces

    def should_retry(self, exc: BaseException | None, call: Call) -> bool:
        if exc is None:
            return False
        safe = call.method.upper() in _IDEMPOTENT_METHODS or any(
            k.lower() == "idempotency-key" for k in call.headers
        )
        if isinstance(exc, APIError):
            if exc.retry_after is not None and exc.retry_after > self.max_retry_after:
                return False
            if exc.status in (429, 503):  # the server says it did not process the request
                return True
            return exc.status in RETRY_STATUSES and safe
        if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
            return True  # nothing reached the server
        if isinstance(exc, httpx.TransportError):
            return safe  # the request may have been processed: only repeat what is safe
        return False

    def wait_seconds(self, attempt_number: int, exc: BaseException | None) -> float:
        if isinstance(exc, APIError) and exc.retry_after is not None:
            return exc.retry_after
        exp = min(self.backoff_max, self.backoff_base * 2 ** (attempt_number - 1))
        return exp / 2 + random.uniform(0, exp / 2)

    def tenacity_kwargs(self, call: Call) -> dict[str, Any]:
        """Arguments for ``tenacity.Retrying`` / ``AsyncRetrying`` (same for both)."""
        import tenacity

        return {
            "stop": tenacity.stop_after_attempt(self.max_retries + 1),
            "retry": tenacity.retry_if_exception(lambda e: self.should_retry(e, call)),
            "wait": lambda rs: self.wait_seconds(
                rs.attempt_number, rs.outcome.exception() if rs.outcome else None
            ),
            "reraise": True,
        }


# ------------------------------------------------------------------ helpers


def _q(value: object) -> str:
    return quote(str(value), safe="")


def _id(obj: Any) -> str | None:
    """A file/job given as an id string or as the object returned by the SDK."""
    if obj is None:
        return None
    if isinstance(obj, (FileObject, Job)):
        return obj.id
    if isinstance(obj, dict):
        return str(obj["id"])
    return str(obj)


def page_from_body(body: Any, parse: Callable[[dict[str, Any]], T]) -> Page:
    if isinstance(body, list):  # an endpoint that is not paginated
        return Page([parse(x) for x in body], False, None)
    body = body or {}
    raw = body.get("data") or []
    data = [parse(x) for x in raw]
    has_more = bool(body.get("has_more"))
    nxt = body.get("last_id")  # the service's cursor: pass it as ``after``
    if nxt is None and raw and isinstance(raw[-1], dict):
        nxt = raw[-1].get("id")
    return Page(data, has_more, None if nxt is None else str(nxt))


ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")


def operation(gen_method: Callable[..., Gen[T]]) -> Callable[..., Any]:
    """Public method from a generator method: the driver runs it (sync: the value; async: a
    coroutine of the value)."""

    @functools.wraps(gen_method)
    def public(self: Any, *args: Any, **kwargs: Any) -> Any:
        return self._driver.run(gen_method(self, *args, **kwargs))

    return public


def paginated(page_method: Callable[..., Gen[Page]]) -> Callable[..., Any]:
    """Public auto-paging method from a one-page generator method taking ``after=``: sync
    returns an iterator, async an async iterator, over every item of every page."""

    @functools.wraps(page_method)
    def public(self: Any, *args: Any, **kwargs: Any) -> Any:
        start = kwargs.pop("after", None)
        return self._driver.paginate(
            lambda after: page_method(self, *args, after=after, **kwargs), start
        )

    return public


# ------------------------------------------------------------------ resources
