"""Request id (``X-Request-ID``, echoed or generated) and request metrics, as plain ASGI."""

from __future__ import annotations

import contextvars
import logging
import re
import secrets
import time
from typing import Any

from prometheus_client import Histogram

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_VALID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

HTTP_LATENCY = Histogram(
    "sanitizer_http_request_duration_seconds",
    "API request latency",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get() or "-"
        return True


class RequestContext:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v.decode() for k, v in scope["headers"] if k == b"x-request-id"), None)
        rid = given if given and _VALID.match(given) else f"req_{secrets.token_hex(8)}"
        scope.setdefault("state", {})["request_id"] = rid
        token = REQUEST_ID.set(rid)
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", []).append((b"x-request-id", rid.encode()))
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            HTTP_LATENCY.labels(scope["method"], path, str(status)).observe(
                time.perf_counter() - start
            )
            REQUEST_ID.reset(token)


MAX_JSON_BODY = 256 * 1024  # a job request is a few KB; uploads are multipart and bounded apart


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuses (413, problem+json) a request body over ``MAX_JSON_BODY`` bytes unless it is a
    multipart upload (``/v1/files`` bounds those itself, streaming to disk). Checked on the
    declared Content-Length and again on the bytes received (chunked bodies)."""

    def __init__(self, app: Any, max_bytes: int = MAX_JSON_BODY) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if headers.get(b"content-type", b"").startswith(b"multipart/"):
            await self.app(scope, receive, send)
            return
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        received = 0
        started = False

        async def counted() -> dict[str, Any]:
            nonlocal received
            message: dict[str, Any] = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _BodyTooLarge
            return message

        async def tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _BodyTooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send)

    async def _refuse(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from starlette.requests import Request

        from app.problems import problem_response

        response = problem_response(
            Request(scope, receive),
            413,
            "body_too_large",
            f"the request body is over {self.max_bytes} bytes",
            hint="job requests are small JSON documents; upload data and adapters as files "
            "with POST /v1/files and refer to them by id",
            headers={"connection": "close"},
        )
        await response(scope, receive, send)
