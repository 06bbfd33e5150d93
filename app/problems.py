"""Errors as ``application/problem+json`` (RFC 9457), with a stable ``code`` and the request id."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sanitizer.errors import DataValidationError, SanitizerError

log = logging.getLogger("app")

PROBLEM_JSON = "application/problem+json"


class ApiError(Exception):
    """Raise anywhere in a route: becomes a problem+json response."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        hint: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail, self.hint = status, code, detail, hint
        self.errors, self.headers, self.extra = errors, headers, extra


def not_found(kind: str, obj_id: str) -> ApiError:
    return ApiError(
        404,
        f"{kind}_not_found",
        f"no {kind} '{obj_id}' in this project",
        hint=f"check the id; list yours with GET /v1/{kind}s",
    )


def from_library(exc: SanitizerError, *, status: int = 422, field: str | None = None) -> ApiError:
    """A library error (bad input) as a 4xx that says what to fix."""
    errors = None
    if isinstance(exc, DataValidationError):
        errors = [
            {"file": p.file, "line": p.line, "column": p.column, "message": p.message}
            for p in exc.problems
        ]
    hint = exc.hint or "fix the input named in detail (and errors[] when present), then retry"
    err = ApiError(status, exc.code, exc.message, hint=hint, errors=errors)
    if field:
        err.extra["field"] = field
    return err


def problem_response(
    request: Request,
    status: int,
    code: str,
    detail: str,
    *,
    hint: str | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://sanitizer.invalid/problems/{code}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
        "request_id": getattr(request.state, "request_id", None),
        "instance": request.url.path,
    }
    if hint:
        body["hint"] = hint
    if errors is not None:
        body["errors"] = errors
    body.update(extra)
    return JSONResponse(body, status, headers=headers, media_type=PROBLEM_JSON)


def _loc(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(p) for p in loc)


def _allowed_methods(request: Request) -> str:
    from starlette.routing import Match

    def leaves(routes: list[Any]) -> Iterator[Any]:
        for route in routes:
            inner = getattr(route, "original_router", None)  # FastAPI's included routers
            yield from leaves(inner.routes) if inner is not None else [route]

    methods: set[str] = set()
    for route in leaves(request.app.router.routes):
        if not getattr(route, "methods", None):
            continue
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details; `code` is stable, `hint` says how to fix it",
    "type": "object",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "hint": {"type": "string"},
        "field": {"type": "string"},
        "request_id": {"type": ["string", "null"]},
        "instance": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}


def document(app: FastAPI) -> None:
    """The OpenAPI document says what the API really answers: every error of every operation
    is ``application/problem+json`` (4XX/5XX, replacing FastAPI's 422 ``HTTPValidationError``),
    and ``/v1`` operations need a bearer API key (Swagger UI shows an Authorize button)."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
        for unused in ("HTTPValidationError", "ValidationError"):
            components["schemas"].pop(unused, None)
        components["securitySchemes"] = {
            "apiKey": {
                "type": "http",
                "scheme": "bearer",
                "description": "an API key from `sanitizer keys create`",
            }
        }
        problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
        for path, operations in schema.get("paths", {}).items():
            for op in operations.values():
                responses = op.setdefault("responses", {})
                responses.pop("422", None)
                responses["4XX"] = {"description": "refused: see code and hint", "content": problem}
                responses["5XX"] = {"description": "server error or not ready", "content": problem}
                if path.startswith("/v1/"):
                    op["security"] = [{"apiKey": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return problem_response(
            request,
            exc.status,
            exc.code,
            exc.detail,
            hint=exc.hint,
            errors=exc.errors,
            headers=exc.headers,
            **exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e["loc"]), "message": e["msg"], "type": e["type"]} for e in exc.errors()
        ]
        shown = "; ".join(f"{_loc(e['loc'])}: {e['message']}" for e in errors[:5])
        return problem_response(
            request,
            422,
            "validation_error",
            f"the request is invalid: {shown}",
            hint="fix the fields listed in errors[] (see the schema at /docs)",
            errors=errors,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        detail = str(exc.detail)
        hint = "see the API reference at /docs"
        if exc.status_code == 404:
            detail = f"no route {request.method} {request.url.path}"
            hint = "check the path (every endpoint is under /v1); the routes are listed at /docs"
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
            # Starlette names the methods of the first route that matched the path only
            # (GET of /v1/files/{id}, not its DELETE): name every route's
            allowed = _allowed_methods(request) or headers.get("Allow", "")
            if allowed:
                headers["Allow"] = allowed
                hint = f"use {allowed}"
        return problem_response(
            request, exc.status_code, code, detail, hint=hint, headers=headers or None
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(
            request,
            500,
            "internal_error",
            "the server failed to handle this request",
            hint="retry later; quote the request_id when reporting it",
        )
