"""The one implementation behind ``Client`` and ``AsyncClient``.

Every API method is written once, as a generator that *yields* what it needs done —
:class:`Call` (one HTTP exchange, retried by the driver) or :class:`Sleep` — and receives the
:class:`Response`. ``client.py`` has two small drivers that execute those operations with
``httpx.Client`` + ``tenacity.Retrying`` or ``httpx.AsyncClient`` + ``tenacity.AsyncRetrying``;
nothing else differs between the sync and async clients.
"""

from __future__ import annotations

import builtins
import functools
import json
import os
import random
import tempfile
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx

from sanitizer_client import _archive
from sanitizer_client.errors import (
    APIError,
    ChecksumMismatchError,
    SanitizerClientError,
    WaitTimeoutError,
    error_from_response,
)
from sanitizer_client.types import AdapterDownload, Event, FileObject, Job, Page

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


class Files:
    """``client.files``: upload, list, get, delete."""

    def __init__(self, driver: Any) -> None:
        self._driver = driver

    def _upload(
        self,
        path: str | os.PathLike[str],
        purpose: str | None = None,
        *,
        filename: str | None = None,
        task: str | None = None,
        text_column: str | None = None,
        label_column: str | None = None,
    ) -> Gen[FileObject]:
        """Upload a file; ``purpose`` defaults to ``adapter`` for a folder or an archive
        (.zip/.tar/.tar.gz/.tgz) and ``dataset`` otherwise. A dataset is checked on upload
        with ``task`` (detected when left out) and the named text/label columns."""
        src = Path(path)
        if not src.exists():
            raise SanitizerClientError(f"{src} does not exist")
        if purpose is None:
            archive = src.name.lower().endswith((".zip", ".tar", ".tar.gz", ".tgz"))
            purpose = "adapter" if src.is_dir() or archive else "dataset"
        tmp: Path | None = None
        try:
            if src.is_dir():  # a PEFT folder: zipped on the fly (deterministic bytes)
                tmp = _archive.zip_directory(src)
                upload_path, name = tmp, filename or f"{src.name}.zip"
            else:
                upload_path, name = src, filename or src.name
            local = _archive.sha256_file(upload_path)
            resp = yield Call(
                "POST",
                "/v1/files",
                data={
                    "purpose": purpose,
                    **{
                        k: v
                        for k, v in (
                            ("task", task),
                            ("text_column", text_column),
                            ("label_column", label_column),
                        )
                        if v is not None
                    },
                },
                upload=Upload("file", name, upload_path),
            )
            obj = FileObject.from_dict(resp.body)
            if obj.sha256 is None or obj.sha256.lower() != local:
                # do not leave a corrupt upload behind; a 200 answer is a file the project
                # already had (the same bytes uploaded before), which is not ours to delete
                if resp.status == 201:
                    try:
                        yield Call("DELETE", f"/v1/files/{_q(obj.id)}", expect="text")
                    except APIError:
                        pass
                raise ChecksumMismatchError(
                    f"upload of {src} arrived corrupted: local sha256 {local}, "
                    f"server computed {obj.sha256}",
                    expected=local,
                    actual=obj.sha256,
                )
            return obj
        finally:
            if tmp is not None:
                tmp.unlink(missing_ok=True)

    def _list_page(
        self, *, purpose: str | None = None, limit: int | None = None, after: str | None = None
    ) -> Gen[Page]:
        resp = yield Call(
            "GET", "/v1/files", params={"purpose": purpose, "limit": limit, "after": after}
        )
        return page_from_body(resp.body, FileObject.from_dict)

    def _get(self, file_id: str) -> Gen[FileObject]:
        resp = yield Call("GET", f"/v1/files/{_q(_id(file_id))}")
        return FileObject.from_dict(resp.body)

    def _delete(self, file_id: str) -> Gen[None]:
        yield Call("DELETE", f"/v1/files/{_q(_id(file_id))}", expect="text")
        return None

    upload = operation(_upload)
    list = paginated(_list_page)
    list_page = operation(_list_page)
    get = operation(_get)
    delete = operation(_delete)


class Jobs:
    """``client.jobs``: create, get, list, cancel, events, report, wait, download."""

    def __init__(self, driver: Any) -> None:
        self._driver = driver

    def _create(
        self,
        *,
        base_model: str,
        clean_dataset_file: str | FileObject,
        method: str = "auto",
        task: str = "classification",
        adapter_file: str | FileObject | None = None,
        base_revision: str | None = None,
        test_dataset_file: str | FileObject | None = None,
        attack: dict[str, Any] | None = None,
        evaluation: dict[str, Any] | None = None,
        hyperparameters: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        **extra: Any,
    ) -> Gen[Job]:
        evaluation = dict(evaluation or {})
        if test_dataset_file is not None:
            evaluation["test_dataset_file"] = _id(test_dataset_file)
        if attack is not None:
            evaluation["attack"] = attack
        body: dict[str, Any] = {
            "method": method,
            "base_model": base_model,
            "base_revision": base_revision,
            "task": task,
            "adapter_file": _id(adapter_file),
            "clean_dataset_file": _id(clean_dataset_file),
            "evaluation": evaluation or None,
            "hyperparameters": hyperparameters,
            "metadata": metadata,
            "webhook_url": webhook_url,
            **extra,
        }
        body = {k: v for k, v in body.items() if v is not None}
        # One key per call, so every retry of this call is the same request to the server.
        key = idempotency_key or str(uuid.uuid4())
        resp = yield Call("POST", "/v1/jobs", json=body, headers={"Idempotency-Key": key})
        return Job.from_dict(resp.body)

    def _get(self, job_id: str) -> Gen[Job]:
        resp = yield Call("GET", f"/v1/jobs/{_q(_id(job_id))}")
        return Job.from_dict(resp.body)

    def _list_page(
        self,
        *,
        status: str | None = None,
        metadata: dict[str, str] | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> Gen[Page]:
        params: dict[str, Any] = {"status": status, "limit": limit, "after": after}
        for k, v in (metadata or {}).items():
            params[f"metadata[{k}]"] = v
        resp = yield Call("GET", "/v1/jobs", params=params)
        return page_from_body(resp.body, Job.from_dict)

    def _cancel(self, job_id: str) -> Gen[Job]:
        resp = yield Call("POST", f"/v1/jobs/{_q(_id(job_id))}/cancel")
        return Job.from_dict(resp.body)

    def _events_page(
        self, job_id: str, *, limit: int | None = None, after: str | None = None
    ) -> Gen[Page]:
        resp = yield Call(
            "GET", f"/v1/jobs/{_q(_id(job_id))}/events", params={"limit": limit, "after": after}
        )
        return page_from_body(resp.body, Event.from_dict)

    def _report(self, job_id: str) -> Gen[dict[str, Any]]:
        resp = yield Call("GET", f"/v1/jobs/{_q(_id(job_id))}/report")
        return resp.body

    def _report_html(self, job_id: str) -> Gen[str]:
        resp = yield Call("GET", f"/v1/jobs/{_q(_id(job_id))}/report.html", expect="text")
        return resp.body

    def _wait(
        self,
        job_id: str,
        timeout: float | None = None,
        poll_interval: float = 2.0,
        on_progress: Callable[[Job], Any] | None = None,
    ) -> Gen[Job]:
        """Poll until the job is succeeded, failed or cancelled; ``on_progress(job)`` per poll."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = yield from self._get(job_id)
            if on_progress is not None:
                on_progress(job)
            if job.done:
                return job
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                raise WaitTimeoutError(
                    f"job {job.id} still {job.status} after {timeout:g} s", job=job
                )
            pause = poll_interval if deadline is None else min(poll_interval, deadline - now)
            yield Sleep(max(0.0, pause))

    def _download_adapter(
        self, job_id: str, dest: str | os.PathLike[str], *, verify: bool = True
    ) -> Gen[AdapterDownload]:
        """Download the sanitized adapter.

        ``dest`` ending in .zip/.tar.gz/.tgz/.tar: the archive is written there. Otherwise
        ``dest`` is a directory the adapter files are extracted into. With ``verify`` the
        archive's sha256 must equal the ``X-Content-SHA256`` header and every file must
        match manifest.json inside; else ChecksumMismatchError and nothing is left at dest.
        """
        dest = Path(dest)
        as_archive = dest.name.endswith(ARCHIVE_SUFFIXES)
        folder = dest.parent if as_archive else dest
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, prefix=".adapter-", suffix=".part")
        os.close(fd)
        tmp = Path(name)
        try:
            resp = yield Call(
                "GET",
                f"/v1/jobs/{_q(_id(job_id))}/artifacts/adapter",
                expect="download",
                download_to=tmp,
            )
            actual = resp.sha256 or _archive.sha256_file(tmp)
            manifest = None
            if verify:
                announced = (resp.headers.get("x-content-sha256") or "").strip().lower()
                announced = announced.removeprefix("sha256:").removeprefix("sha256=")
                if not announced:
                    raise ChecksumMismatchError(
                        "the server sent no X-Content-SHA256 header; cannot verify the download"
                    )
                if announced != actual:
                    raise ChecksumMismatchError(
                        f"downloaded adapter of job {_id(job_id)} has sha256 {actual}, "
                        f"the server announced {announced}",
                        expected=announced,
                        actual=actual,
                    )
                manifest, _ = _archive.verify_archive(tmp)
            if as_archive:
                os.replace(tmp, dest)
                files = _archive._members(dest)[1]
            else:
                files = _archive.extract_archive(tmp, dest)
            return AdapterDownload(dest, actual, verify, manifest, files)
        finally:
            tmp.unlink(missing_ok=True)

    create = operation(_create)
    get = operation(_get)
    list = paginated(_list_page)
    list_page = operation(_list_page)
    cancel = operation(_cancel)
    events = paginated(_events_page)
    report = operation(_report)
    report_html = operation(_report_html)
    wait = operation(_wait)
    download_adapter = operation(_download_adapter)


class Catalog:
    """``client.models`` / ``client.methods``: what a job may name, read before uploading."""

    def __init__(self, driver: Any, path: str) -> None:
        self._driver, self._path = driver, path

    def _list(self) -> Gen[builtins.list[dict[str, Any]]]:
        """Every entry (``id`` and its details), as the service lists them."""
        resp = yield Call("GET", self._path)
        return builtins.list(resp.body["data"])

    def _ids(self) -> Gen[builtins.list[str]]:
        """Just the ids."""
        resp = yield Call("GET", self._path)
        return [str(d["id"]) for d in resp.body["data"]]

    list = operation(_list)
    ids = operation(_ids)
