"""Errors the SDK raises.

Server errors are ``application/problem+json`` (RFC 9457); :class:`APIError` carries every
field of the body so a caller can show what to fix and quote the request id to support.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any


class SanitizerClientError(Exception):
    """Base class of every error raised by ``sanitizer_client``."""


class APIConnectionError(SanitizerClientError):
    """The service could not be reached (after retries): DNS, refused, reset, timeout."""


class APITimeoutError(APIConnectionError):
    """The request timed out (after retries)."""


class ChecksumMismatchError(SanitizerClientError):
    """A sha256 computed locally does not match the one the server announced."""

    def __init__(self, message: str, *, expected: str | None = None, actual: str | None = None):
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class WaitTimeoutError(SanitizerClientError):
    """``jobs.wait`` gave up before the job reached a terminal status."""

    def __init__(self, message: str, *, job: Any = None):
        super().__init__(message)
        self.job = job


class APIError(SanitizerClientError):
    """The service answered with an error status; fields come from the problem+json body."""

    def __init__(
        self,
        status: int,
        *,
        code: str | None = None,
        title: str | None = None,
        detail: str | None = None,
        request_id: str | None = None,
        errors: list[Any] | None = None,
        type: str | None = None,
        instance: str | None = None,
        retry_after: float | None = None,
        body: Any = None,
        hint: str | None = None,
        field: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.title = title
        self.detail = detail
        self.hint = hint  # the service's "what to do about it"
        self.field = field  # the request field at fault, when the service names one
        self.request_id = request_id
        self.errors = errors or []
        self.type = type
        self.instance = instance
        self.retry_after = retry_after
        self.body = body
        super().__init__(self._message())

    def _message(self) -> str:
        msg = f"{self.status} {self.title or 'error'}"
        if self.code:
            msg += f" [{self.code}]"
        if self.detail:
            msg += f": {self.detail}"
        if self.hint:
            msg += f" (hint: {self.hint})"
        for e in self.errors[:5]:
            msg += f"\n  - {_describe(e)}"
        if len(self.errors) > 5:
            msg += f"\n  - ... and {len(self.errors) - 5} more"
        if self.request_id:
            msg += f" (request id {self.request_id})"
        return msg


def _describe(e: Any) -> str:
    """One field error: ``loc: message`` (request fields) or ``file:line column 'c': message``
    (dataset rows, as the service reports invalid_dataset)."""
    if not isinstance(e, dict):
        return str(e)
    text = e.get("msg") or e.get("message") or str(e)
    if "file" in e or "line" in e:
        where = str(e.get("file") or "")
        if e.get("line") is not None:
            where += f":{e['line']}"
        if e.get("column"):
            where += f" column '{e['column']}'"
        return f"{where}: {text}" if where else text
    loc = e.get("loc") or e.get("field") or e.get("pointer") or ""
    if isinstance(loc, list):
        loc = ".".join(str(p) for p in loc)
    return f"{loc}: {text}" if loc else text


class AuthenticationError(APIError):
    """401/403: the API key is missing, wrong, revoked, or not allowed to do this."""


class NotFoundError(APIError):
    """404: no such file or job in this project."""


class ConflictError(APIError):
    """409: the resource is not in a state that allows this (e.g. report of a running job)."""


class ValidationError(APIError):
    """400/413/415/422: the request is wrong; ``errors`` says where."""


class RateLimitError(APIError):
    """429: too many requests; ``retry_after`` seconds to wait."""


class ServiceUnavailableError(APIError):
    """503: the service (or its database/broker) is temporarily unavailable."""


class ServerError(APIError):
    """Any other 5xx."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    409: ConflictError,
    413: ValidationError,
    415: ValidationError,
    422: ValidationError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_from_response(status: int, headers: Any, body: Any, text: str = "") -> APIError:
    """Build the typed error from an error response (problem+json or anything else)."""
    problem = body if isinstance(body, dict) else {}
    # FastAPI's default {"detail": [...]} validation body: keep the list as ``errors``.
    detail = problem.get("detail")
    errors = problem.get("errors")
    if isinstance(detail, list) and errors is None:
        errors, detail = detail, None
    if detail is None and not problem and text:
        detail = text[:500]
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else APIError)
    return cls(
        status,
        code=problem.get("code"),
        title=problem.get("title"),
        detail=detail if detail is None or isinstance(detail, str) else str(detail),
        request_id=problem.get("request_id") or headers.get("x-request-id"),
        errors=errors if isinstance(errors, list) else None,
        type=problem.get("type"),
        instance=problem.get("instance"),
        retry_after=parse_retry_after(headers.get("retry-after")),
        body=body if body is not None else text,
        hint=problem.get("hint") if isinstance(problem.get("hint"), str) else None,
        field=problem.get("field") if isinstance(problem.get("field"), str) else None,
    )
