"""Jobs: submit, list, get, cancel, events, report, artifacts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.deps import ProjectDep, QueueDep, SessionDep, SettingsDep, StoreDep
from app.pagination import keyset_page
from app.problems import ApiError
from app.schemas import (
    EventPublic,
    EventsPublic,
    JobCreate,
    JobPublic,
    JobsPublic,
)
from app.services.downloads import byte_range
from app.services.job_inputs import check_inputs
from app.services.jobs import (
    get_owned_job,
    job_policy,
    replay,
    request_hash,
    require_finished,
    to_public,
)
from jobstore import status as st
from jobstore.db import session_factory
from jobstore.jobs import add_event, dispatch, finish
from jobstore.models import IdempotencyRecord, Job, JobEvent, new_id

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post("", status_code=202, response_model=JobPublic)
def create_job(
    body: JobCreate,
    project: ProjectDep,
    s: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    queue: QueueDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Any:
    """Start a sanitization job (202); honours Idempotency-Key."""
    digest = request_hash(body)
    if idempotency_key:
        existing = replay(s, project, idempotency_key, digest)
        if existing is not None:
            return JSONResponse(
                to_public(existing).model_dump(mode="json"),
                202,
                headers={"Idempotent-Replayed": "true"},
            )
    body = check_inputs(body, s, project, settings, store)
    spec = body.model_dump(mode="json")
    job = Job(
        id=new_id("job"),
        project_id=project.id,
        status=st.VALIDATING,
        method="scan" if body.type == "scan" else body.method,
        task=body.task,
        base_model=body.base_model,
        base_revision=body.base_revision,
        adapter_file_id=body.adapter_file,
        clean_dataset_file_id=body.clean_dataset_file,
        unlabeled_dataset_file_id=body.unlabeled_dataset_file,
        test_dataset_file_id=body.evaluation.test_dataset_file if body.evaluation else None,
        spec=spec,
        meta=body.metadata,
        webhook_url=str(body.webhook_url) if body.webhook_url else None,
        attempt=1,
    )
    s.add(job)
    s.flush()
    st.transition(job, st.QUEUED)
    add_event(s, job.id, "job accepted and queued", phase="queued")
    if idempotency_key:
        s.add(
            IdempotencyRecord(
                project_id=project.id, key=idempotency_key, request_sha256=digest, job_id=job.id
            )
        )
    try:
        s.commit()
    except IntegrityError:  # the same key raced in from another request
        s.rollback()
        existing = replay(s, project, idempotency_key or "", digest)
        if existing is None:
            raise
        return JSONResponse(
            to_public(existing).model_dump(mode="json"),
            202,
            headers={"Idempotent-Replayed": "true"},  # the racing request won: this is a replay
        )
    if not dispatch(session_factory(), job.id, job.attempt, queue.enqueue):
        with session_factory()() as s2:
            add_event(
                s2,
                job.id,
                "the queue is unreachable; the job is kept and will be dispatched when it is back",
                level="warning",
            )
            s2.commit()
    s.refresh(job)
    return to_public(job)


@router.get("", response_model=JobsPublic)
def list_jobs(
    request: Request,
    project: ProjectDep,
    s: SessionDep,
    status: Annotated[str | None, Query(description="filter by status")] = None,
    after: Annotated[str | None, Query(description="the last_id of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobsPublic:
    """List your jobs, newest first; filter by status and metadata[key]=value."""
    q = select(Job).where(Job.project_id == project.id)
    if status:
        if status not in st.STATUSES:
            raise ApiError(
                422,
                "invalid_status",
                f"unknown status '{status}'",
                hint=f"use one of: {', '.join(st.STATUSES)}",
            )
        q = q.where(Job.status == status)
    for k, v in request.query_params.multi_items():
        if k.startswith("metadata[") and k.endswith("]"):
            q = q.where(Job.meta[k[9:-1]].as_string() == v)
    page, more = keyset_page(s, q, Job.id, after or None, limit, newest_first=True)
    return JobsPublic(
        data=[to_public(j) for j in page], has_more=more, last_id=page[-1].id if page else None
    )


@router.get("/{job_id}", response_model=JobPublic)
async def get_job(job_id: str, project: ProjectDep, s: SessionDep) -> JobPublic:
    """Get a job: status, progress (step/total/ETA), timestamps, error."""
    # the polling path: one primary-key read on the event loop, no threadpool hop
    # (docs/SERVICE_BENCHMARKS.md has the figures)
    return to_public(get_owned_job(s, project.id, job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: str, project: ProjectDep, s: SessionDep, queue: QueueDep) -> JobPublic:
    """Cancel a job: queued ones end at once, running ones at the defense's next check."""
    job = get_owned_job(s, project.id, job_id)
    if job.status in st.TERMINAL:
        raise ApiError(
            409,
            "job_finished",
            f"job '{job.id}' already {job.status}; there is nothing to cancel",
            hint=f"read the outcome with GET /v1/jobs/{job.id}",
            status_now=job.status,
        )
    if job.status == st.CANCELLING:
        return to_public(job)
    if not finish(
        s, job.id, st.QUEUED, st.CANCELLED, "cancelled before a worker started it",
        queue.send_webhook,
    ) and st.compare_and_set(s, job.id, st.RUNNING, st.CANCELLING):  # fmt: skip
        add_event(s, job.id, "cancellation requested; the worker stops at its next check")
    s.commit()
    s.refresh(job)
    return to_public(job)


@router.get("/{job_id}/events", response_model=EventsPublic)
def list_events(
    job_id: str,
    project: ProjectDep,
    s: SessionDep,
    after: Annotated[str | None, Query(description="the last_id of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> EventsPublic:
    """A job's events (level, message, metrics), oldest first."""
    get_owned_job(s, project.id, job_id)
    q = select(JobEvent).where(JobEvent.job_id == job_id)
    if after:
        if not (after.isascii() and after.isdigit() and len(after) <= 18):  # a BIGINT id
            raise ApiError(
                422,
                "invalid_cursor",
                f"after must be an event id, got '{after}'",
                hint="pass the id of the last event you received (a number), or leave after out",
            )
    cursor = int(after) if after else None
    page, more = keyset_page(s, q, JobEvent.id, cursor, limit, newest_first=False)
    return EventsPublic(
        data=[
            EventPublic(
                id=str(e.id),
                created_at=e.created_at,
                level=e.level,
                message=e.message,
                phase=e.phase,
                metrics=e.metrics or {},
            )
            for e in page
        ],
        has_more=more,
        last_id=str(page[-1].id) if page else None,
    )


@router.get("/{job_id}/report")
def get_report(job_id: str, project: ProjectDep, s: SessionDep, store: StoreDep) -> Any:
    """The report: ASR/CA before and after, config, hashes, seeds, timings, versions."""
    job = get_owned_job(s, project.id, job_id)
    require_finished(job, "report")
    with store.open(f"jobs/{job.id}/report.json") as f:
        report = json.load(f)
    policy = job_policy(job)
    if policy is not None:
        from sanitizer.report_html import check_policy

        report["verdict"] = {
            "policy": (job.spec or {}).get("policy"),
            **check_policy(report, policy).to_dict(),
        }
    return JSONResponse(report)


@router.get("/{job_id}/report.html", response_class=HTMLResponse)
def get_report_html(job_id: str, project: ProjectDep, s: SessionDep, store: StoreDep) -> Any:
    """The report as a self-contained HTML page."""
    job = get_owned_job(s, project.id, job_id)
    require_finished(job, "report")
    try:
        from sanitizer.report_html import render_report_html
    except ImportError as exc:
        raise ApiError(
            501,
            "not_implemented",
            f"HTML reports are not available on this server: {exc}",
            hint=f"use the JSON report at GET /v1/jobs/{job.id}/report, or install matplotlib "
            "on the API server",
        ) from exc
    with store.open(f"jobs/{job.id}/report.json") as f:
        report = json.load(f)
    return HTMLResponse(
        render_report_html(
            report, policy=job_policy(job), job=to_public(job).model_dump(mode="json")
        )
    )


@router.get(
    "/{job_id}/artifacts/adapter",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/zip": {}}, "description": "the whole archive"},
        206: {"content": {"application/zip": {}}, "description": "the requested byte range"},
        307: {"description": "a short-lived pre-signed URL (SANITIZER_DOWNLOAD_REDIRECT)"},
        416: {"description": "the Range lies outside the archive"},
    },
)
def download_adapter(
    job_id: str,
    project: ProjectDep,
    s: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
    request: Request,
) -> Any:
    """The sanitized adapter (.zip with manifest.json); sha256 in X-Content-SHA256 and as
    the ETag. ``Range: bytes=N-`` resumes a broken download (206). With an S3 store and
    SANITIZER_DOWNLOAD_REDIRECT, a 307 to a pre-signed URL, issued after the same checks."""
    job = get_owned_job(s, project.id, job_id)
    require_finished(job, "artifact")
    if not job.artifact_sha256:
        raise ApiError(
            404,
            "no_artifact",
            f"job '{job.id}' is a {(job.spec or {}).get('type', 'sanitize')} job and wrote no "
            "adapter",
            hint=f"read its report at GET /v1/jobs/{job.id}/report",
        )
    key = f"jobs/{job.id}/adapter.zip"
    filename = f"{job.id}-adapter.zip"
    headers = {
        "X-Content-SHA256": job.artifact_sha256,
        "ETag": f'"{job.artifact_sha256}"',
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'attachment; filename="{filename}"',
    }
    if settings.download_redirect:
        url = store.presign(key, settings.presign_seconds, filename)
        if url is not None:
            return RedirectResponse(
                url,
                status_code=307,
                headers={"X-Content-SHA256": job.artifact_sha256, "Cache-Control": "no-store"},
            )
    size = store.size(key)
    span = byte_range(request.headers.get("range"), request.headers.get("if-range"), size,
                      headers["ETag"])  # fmt: skip
    if span is None:
        blob, status, length = store.open(key), 200, size
    else:
        start, end = span
        blob, status, length = store.open_range(key, start, end), 206, end - start + 1
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"

    def chunks() -> Iterator[bytes]:
        with blob:
            yield from iter(lambda: blob.read(1 << 20), b"")

    return StreamingResponse(
        chunks(),
        status_code=status,
        media_type="application/zip",
        headers={**headers, "Content-Length": str(length)},
    )
