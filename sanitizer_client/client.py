"""``Client`` and ``AsyncClient``: the same resources (``files``, ``jobs``) over two drivers.

The drivers are the only sync/async-specific code: they execute the operations the shared
generator methods in ``_core`` yield — an HTTP call (retried with tenacity per the
:class:`~sanitizer_client._core.RetryPolicy`) or a sleep.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import tenacity

from sanitizer_client._core import (
    Call,
    Gen,
    Page,
    Response,
    RetryPolicy,
    Sleep,
    build_response,
    download_headers,
    raise_for_status,
    request_kwargs,
    resume_state,
)
from sanitizer_client._resources import Catalog, Files, Jobs
from sanitizer_client._version import __version__
from sanitizer_client.errors import APIConnectionError, APITimeoutError

DEFAULT_URL = "http://127.0.0.1:8000"


def _settings(base_url: str | None, api_key: str | None) -> tuple[str, str | None]:
    url = base_url or os.environ.get("SANITIZER_URL") or DEFAULT_URL
    key = api_key if api_key is not None else os.environ.get("SANITIZER_API_KEY")
    return url.rstrip("/"), key or None


def _headers(api_key: str | None, extra: dict[str, str] | None) -> dict[str, str]:
    h = {"User-Agent": f"sanitizer-client/{__version__}", "Accept": "application/json"}
    if api_key:
        h["Authorization"] = f"Bearer {api_key}"
    h.update(extra or {})
    return h


def _connection_error(exc: httpx.TransportError, url: str) -> APIConnectionError:
    cls = APITimeoutError if isinstance(exc, httpx.TimeoutException) else APIConnectionError
    return cls(f"cannot reach the sanitizer service at {url}: {exc.__class__.__name__}: {exc}")


class _SyncDriver:
    def __init__(self, http: httpx.Client, policy: RetryPolicy, url: str) -> None:
        self.http, self.policy, self.url = http, policy, url

    def run(self, gen: Gen[Any]) -> Any:
        try:
            op = next(gen)
            while True:
                try:
                    result = self.execute(op)
                except Exception as exc:  # let the operation handle it (or re-raise)
                    op = gen.throw(exc)
                else:
                    op = gen.send(result)
        except StopIteration as stop:
            return stop.value
        finally:
            gen.close()

    def paginate(self, page: Callable[[str | None], Gen[Page]], after: str | None) -> Iterator:
        while True:
            p: Page = self.run(page(after))
            yield from p.data
            if not p.has_more or p.next_after is None:
                return
            after = p.next_after

    def execute(self, op: Call | Sleep) -> Response | None:
        if isinstance(op, Sleep):
            time.sleep(op.seconds)
            return None
        try:
            for attempt in tenacity.Retrying(**self.policy.tenacity_kwargs(op)):
                with attempt:
                    return self._send(op)
        except httpx.TransportError as exc:
            raise _connection_error(exc, self.url) from exc
        raise AssertionError("unreachable")

    def _send(self, call: Call) -> Response:
        if call.expect == "download":
            return self._download(call)
        upload = open(call.upload.path, "rb") if call.upload else None  # fresh per attempt
        try:
            request = self.http.build_request(
                call.method, call.path, **request_kwargs(call, upload)
            )
            resp = self.http.send(request, stream=True)
            try:
                content = resp.read()
            finally:
                resp.close()
            return build_response(call, resp.status_code, resp.headers, content)
        finally:
            if upload:
                upload.close()

    def _download(self, call: Call) -> Response:
        """Stream to ``call.download_to``; a retry after a broken transfer resumes with
        ``Range``; a 307 to a pre-signed URL is followed (httpx drops the API key when the
        host changes)."""
        assert call.download_to is not None
        have, h = resume_state(call.download_to)
        while True:
            request = self.http.build_request(call.method, call.path, **request_kwargs(call))
            if have:
                request.headers["Range"] = f"bytes={have}-"
            resp = self.http.send(request, stream=True, follow_redirects=True)
            try:
                if resp.status_code == 416 and have:  # the part on disk is not a prefix
                    have, h = 0, hashlib.sha256()
                    continue
                if resp.status_code < 400:
                    if resp.status_code != 206:
                        have, h = 0, hashlib.sha256()
                    with open(call.download_to, "ab" if have else "wb") as f:
                        for chunk in resp.iter_bytes():
                            h.update(chunk)
                            f.write(chunk)
                    return Response(resp.status_code, download_headers(resp), None, h.hexdigest())
                content = resp.read()
            finally:
                resp.close()
            raise_for_status(resp.status_code, resp.headers, content)


class _AsyncDriver:
    def __init__(self, http: httpx.AsyncClient, policy: RetryPolicy, url: str) -> None:
        self.http, self.policy, self.url = http, policy, url

    async def run(self, gen: Gen[Any]) -> Any:
        try:
            op = next(gen)
            while True:
                try:
                    result = await self.execute(op)
                except Exception as exc:
                    op = gen.throw(exc)
                else:
                    op = gen.send(result)
        except StopIteration as stop:
            return stop.value
        finally:
            gen.close()

    async def paginate(
        self, page: Callable[[str | None], Gen[Page]], after: str | None
    ) -> AsyncIterator:
        while True:
            p: Page = await self.run(page(after))
            for item in p.data:
                yield item
            if not p.has_more or p.next_after is None:
                return
            after = p.next_after

    async def execute(self, op: Call | Sleep) -> Response | None:
        if isinstance(op, Sleep):
            await asyncio.sleep(op.seconds)
            return None
        try:
            async for attempt in tenacity.AsyncRetrying(**self.policy.tenacity_kwargs(op)):
                with attempt:
                    return await self._send(op)
        except httpx.TransportError as exc:
            raise _connection_error(exc, self.url) from exc
        raise AssertionError("unreachable")

    async def _send(self, call: Call) -> Response:
        if call.expect == "download":
            return await self._download(call)
        # httpx streams a sync file object in async multipart uploads as well.
        upload = open(call.upload.path, "rb") if call.upload else None
        try:
            request = self.http.build_request(
                call.method, call.path, **request_kwargs(call, upload)
            )
            resp = await self.http.send(request, stream=True)
            try:
                content = await resp.aread()
            finally:
                await resp.aclose()
            return build_response(call, resp.status_code, resp.headers, content)
        finally:
            if upload:
                upload.close()

    async def _download(self, call: Call) -> Response:
        """As the sync driver's: resume with ``Range``, follow a pre-signed redirect."""
        assert call.download_to is not None
        have, h = resume_state(call.download_to)
        while True:
            request = self.http.build_request(call.method, call.path, **request_kwargs(call))
            if have:
                request.headers["Range"] = f"bytes={have}-"
            resp = await self.http.send(request, stream=True, follow_redirects=True)
            try:
                if resp.status_code == 416 and have:
                    have, h = 0, hashlib.sha256()
                    continue
                if resp.status_code < 400:
                    if resp.status_code != 206:
                        have, h = 0, hashlib.sha256()
                    with open(call.download_to, "ab" if have else "wb") as f:
                        async for chunk in resp.aiter_bytes():
                            h.update(chunk)
                            f.write(chunk)
                    return Response(resp.status_code, download_headers(resp), None, h.hexdigest())
                content = await resp.aread()
            finally:
                await resp.aclose()
            raise_for_status(resp.status_code, resp.headers, content)


class Client:
    """Synchronous client.

    ``Client(base_url=None, api_key=None, timeout=60.0, max_retries=3)``; url and key default
    to ``$SANITIZER_URL`` (else http://127.0.0.1:8000) and ``$SANITIZER_API_KEY``.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_retry_after: float = 60.0,
        headers: dict[str, str] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url, self.api_key = _settings(base_url, api_key)
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=_headers(self.api_key, headers),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
        )
        policy = RetryPolicy(max_retries, backoff_base, backoff_max, max_retry_after)
        driver = _SyncDriver(self._http, policy, self.base_url)
        self.files = Files(driver)
        self.jobs = Jobs(driver)
        self.models = Catalog(driver, "/v1/models")
        self.methods = Catalog(driver, "/v1/methods")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient:
    """Asynchronous client: the same methods as :class:`Client`, awaited (``list`` and
    ``events`` are async iterators)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        *,
        backoff_base: float = 0.5,
        backoff_max: float = 8.0,
        max_retry_after: float = 60.0,
        headers: dict[str, str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url, self.api_key = _settings(base_url, api_key)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=_headers(self.api_key, headers),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
        )
        policy = RetryPolicy(max_retries, backoff_base, backoff_max, max_retry_after)
        driver = _AsyncDriver(self._http, policy, self.base_url)
        self.files = Files(driver)
        self.jobs = Jobs(driver)
        self.models = Catalog(driver, "/v1/models")
        self.methods = Catalog(driver, "/v1/methods")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
