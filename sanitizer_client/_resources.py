"""The SDK's resources (client.files, client.jobs, client.models, client.methods) as generators of Call/Sleep operations; the sync and async drivers in client.py run them, so both clients share one implementation."""

from __future__ import annotations

import builtins
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sanitizer_client import _archive
from sanitizer_client._core import (
    ARCHIVE_SUFFIXES,
    Call,
    Gen,
    Sleep,
    Upload,
    _id,
    _q,
    operation,
    page_from_body,
    paginated,
)
from sanitizer_client.errors import (
    APIError,
    ChecksumMismatchError,
    SanitizerClientError,
    WaitTimeoutError,
)
from sanitizer_client.types import AdapterDownload, Event, FileObject, Job, Page


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
        with ``task`` (detected when left out) and the named text/label columns;
        ``purpose="unlabeled"`` is a file of texts without labels (its ``text_column``)."""
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
        unlabeled_dataset_file: str | FileObject | None = None,
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
            "unlabeled_dataset_file": _id(unlabeled_dataset_file),
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
