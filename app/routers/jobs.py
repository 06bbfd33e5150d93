"""Jobs: submit, list, get, cancel, events, report, artifacts."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, StreamingResponse
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.deps import ProjectDep, QueueDep, SessionDep, SettingsDep, StoreDep
from app.pagination import keyset_page
from app.problems import ApiError, from_library, not_found
from app.schemas import (
    AdapterArtifact,
    Evaluation,
    EventPublic,
    EventsPublic,
    JobCreate,
    JobError,
    JobPublic,
    JobsPublic,
    Progress,
)
from jobstore import status as st
from jobstore.db import session_factory
from jobstore.jobs import add_event, dispatch, finish
from jobstore.models import File, IdempotencyRecord, Job, JobEvent, Project, new_id
from jobstore.settings import Settings
from jobstore.webhook_targets import WebhookTargetError, check_url
from sanitizer.attacks import CLASSIFICATION_ATTACKS, GENERATION_ATTACKS, AttackSpec
from sanitizer.defenses import registry
from sanitizer.defenses.configs import ScanConfig, validate_config
from sanitizer.defenses.registry import config_for
from sanitizer.errors import ConfigError, SanitizerError

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

MAX_METADATA_KEYS = 16
TASK_ATTACKS = {"classification": CLASSIFICATION_ATTACKS, "generation": GENERATION_ATTACKS}


def to_public(job: Job) -> JobPublic:
    spec = job.spec or {}
    succeeded = job.status == st.SUCCEEDED
    done = succeeded and job.artifact_sha256
    return JobPublic(
        id=job.id,
        type=spec.get("type", "sanitize"),
        status=job.status,  # type: ignore[arg-type]
        method=job.method,
        task=job.task,
        base_model=job.base_model,
        base_revision=job.base_revision,
        adapter_file=job.adapter_file_id,
        clean_dataset_file=job.clean_dataset_file_id,
        evaluation=spec.get("evaluation"),
        hyperparameters=spec.get("hyperparameters") or {},
        seed=spec.get("seed", 0),
        metadata=job.meta or {},
        webhook_url=job.webhook_url,
        policy=spec.get("policy"),
        progress=Progress.model_validate(job.progress) if job.progress else None,
        error=JobError(code=job.error_code, message=job.error_message or "")
        if job.error_code
        else None,
        attempt=job.attempt,
        created_at=job.created_at,
        queued_at=job.queued_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        artifacts={
            "adapter": AdapterArtifact(
                url=f"/v1/jobs/{job.id}/artifacts/adapter", sha256=job.artifact_sha256 or ""
            )
        }
        if done
        else None,
        report_url=f"/v1/jobs/{job.id}/report" if succeeded else None,
    )


def get_owned_job(s: SessionDep, project_id: str, job_id: str) -> Job:
    job = s.get(Job, job_id)
    if job is None or job.project_id != project_id:
        raise not_found("job", job_id)
    return job


def _file(s: SessionDep, project: Project, file_id: str, purpose: str, field: str) -> File:
    f = s.get(File, file_id)
    if f is None or f.project_id != project.id:
        raise ApiError(
            404,
            "file_not_found",
            f"{field} '{file_id}' is not a file of this project",
            hint="upload it with POST /v1/files and use the returned id",
            field=field,
        )
    if f.purpose != purpose:
        raise ApiError(
            422,
            "wrong_file_purpose",
            f"{field} '{file_id}' was uploaded with purpose '{f.purpose}', not '{purpose}'",
            hint=f"upload the file again with purpose={purpose}",
            field=field,
        )
    return f


def _resolve_label_names(
    body: JobCreate, ev: Evaluation, names: list[str] | None
) -> tuple[JobCreate, list[tuple[str, AttackSpec]]]:
    """``body`` with every target label given by name replaced by its id in the clean
    dataset's labels, and the (field, attack) pairs of the result."""
    resolved: dict[str, int] = {}
    for where, name in ev.target_label_names.items():
        if not names or name not in names:
            known = ", ".join(f"{i}={n}" for i, n in enumerate((names or [])[:50]))
            raise ApiError(
                422,
                "invalid_attack",
                f"{where}.target_label '{name}' is not a label of the clean dataset"
                + (f" (its labels: {known})" if known else " (it has no label names)"),
                hint="give one of the dataset's label names or its id",
                field=f"{where}.target_label",
            )
        resolved[where] = names.index(name)

    def fix(where: str, a: AttackSpec) -> AttackSpec:
        return a.model_copy(update={"target_label": resolved[where]}) if where in resolved else a

    new_ev = ev.model_copy(
        update={
            "attack": fix("evaluation.attack", ev.attack) if ev.attack else None,
            "extra_attacks": [
                fix(f"evaluation.extra_attacks.{i}", a) for i, a in enumerate(ev.extra_attacks)
            ],
            "target_label_names": {},
        }
    )
    new_body = body.model_copy(update={"evaluation": new_ev})
    attacks = [("evaluation.attack", new_ev.attack)] if new_ev.attack else []
    attacks += [(f"evaluation.extra_attacks.{i}", a) for i, a in enumerate(new_ev.extra_attacks)]
    return new_body, attacks


def _check_inputs(
    body: JobCreate, s: SessionDep, project: Project, settings: Settings, store: StoreDep
) -> JobCreate:
    """Everything that can be checked without torch, so bad jobs fail now with a 4xx.
    Returns the body as it is stored: target labels given by name resolved to ids."""
    from app.uploads import validate_dataset
    from jobstore.model_cache import resolve
    from sanitizer.safety import check_adapter_dir, check_adapter_fits, extract_archive

    methods = registry.method_names(include_auto=True)  # read per request: the registry
    if body.type == "scan":
        _check_scan(body)
    elif body.method not in methods:
        raise ApiError(
            422,
            "unknown_method",
            f"unknown method '{body.method}'",
            hint=f"use one of: {', '.join(methods)}",
            errors=[{"loc": ["body", "method"], "message": f"one of {', '.join(methods)}"}],
        )
    if len(body.metadata) > MAX_METADATA_KEYS:
        raise ApiError(
            422,
            "invalid_metadata",
            f"metadata has {len(body.metadata)} keys; at most {MAX_METADATA_KEYS} are allowed",
            errors=[{"loc": ["body", "metadata"], "message": f"at most {MAX_METADATA_KEYS} keys"}],
            hint="keep the keys you filter on; put the rest in one JSON-encoded value",
        )
    config = _check_config(body)
    if body.webhook_url is not None:
        try:
            check_url(str(body.webhook_url), settings.webhook_allow)
        except WebhookTargetError as exc:
            raise ApiError(
                422,
                "invalid_webhook_url",
                str(exc),
                hint="give a public http(s) URL, or ask the operator to allow the host",
                field="webhook_url",
            ) from exc
    try:
        if body.type == "sanitize":
            registry.resolve(body.method, task=body.task, has_adapter=body.adapter_file is not None)
    except ConfigError as exc:
        raise from_library(exc, field="method") from exc
    try:
        model_dir = resolve(body.base_model, body.base_revision)
    except SanitizerError as exc:
        raise from_library(exc, field="base_model") from exc
    teacher = getattr(config, "teacher_model", None)
    if teacher:
        try:
            resolve(teacher)
        except SanitizerError as exc:
            raise from_library(exc, field="hyperparameters.teacher_model") from exc
    ev = body.evaluation
    attacks = [("evaluation.attack", ev.attack)] if ev and ev.attack else []
    if ev:
        attacks += [(f"evaluation.extra_attacks.{i}", a) for i, a in enumerate(ev.extra_attacks)]
    for where, attack in attacks:
        if attack.task != body.task:
            raise ApiError(
                422,
                "invalid_attack",
                f"{where}: attack '{attack.name}' is a {attack.task} attack but the job's task "
                f"is {body.task}",
                hint=f"for {body.task} use one of: {', '.join(TASK_ATTACKS[body.task])}",
                field=f"{where}.name",
            )
    datasets = [("clean_dataset_file", body.clean_dataset_file)]
    if body.evaluation and body.evaluation.test_dataset_file:
        datasets.append(("evaluation.test_dataset_file", body.evaluation.test_dataset_file))
    for field, fid in datasets:
        f = _file(s, project, fid, "dataset", field)
        info = f.info or {}
        same = (info.get("task"), info.get("text_column"), info.get("label_column")) == (
            body.task,
            body.text_column,
            body.label_column,
        )
        if not same:  # validated at upload for another task/columns: check again for this job
            with store.local_copy(f.storage_key) as local:
                info = validate_dataset(local, body.task, body.text_column, body.label_column)
        names = info.get("label_names")
        if field == "clean_dataset_file" and ev and ev.target_label_names:
            body, attacks = _resolve_label_names(
                body, ev, names if body.task == "classification" else None
            )
        if field == "clean_dataset_file" and body.task == "classification" and names:
            for where, attack in attacks:
                t = attack.target_label
                if t is not None and not 0 <= t < len(names):
                    raise ApiError(
                        422,
                        "invalid_attack",
                        f"{where}.target_label is {t}, but the clean dataset has "
                        f"{len(names)} labels ({', '.join(map(str, names[:20]))}): a target "
                        "that cannot exist would be reported as ASR 0",
                        hint=f"use a label id from 0 to {len(names) - 1}",
                        field=f"{where}.target_label",
                    )
    if body.adapter_file:
        f = _file(s, project, body.adapter_file, "adapter", "adapter_file")
        tmp = Path(tempfile.mkdtemp(prefix="check-", dir=_tmp_root(settings)))
        try:
            with store.local_copy(f.storage_key) as local:
                folder = extract_archive(
                    local,
                    tmp,
                    max_bytes=settings.max_extracted_bytes,
                    max_files=settings.max_archive_files,
                )
            adapter = check_adapter_dir(folder, expected_base_model=body.base_model)
            check_adapter_fits(adapter, model_dir)
        except SanitizerError as exc:
            raise from_library(exc, field="adapter_file") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return body


def _check_scan(body: JobCreate) -> None:
    """A scan job: classification only, no method, no evaluation attack (it must not be
    told the trigger)."""
    if body.task != "classification":
        raise ApiError(
            422,
            "unsupported_task",
            "scan jobs support classification models today",
            hint="for a generation model, submit a sanitize job (rebuild when you have the "
            "base model and the adapter)",
            field="task",
        )
    if body.method not in ("auto", "scan"):
        raise ApiError(
            422,
            "invalid_method",
            f"a scan job takes no method (got '{body.method}')",
            hint="leave method out for type=scan",
            field="method",
        )
    if body.evaluation is not None and (body.evaluation.attack or body.evaluation.extra_attacks):
        raise ApiError(
            422,
            "invalid_evaluation",
            "a scan job is never told the trigger: evaluation.attack is not allowed",
            hint="leave evaluation out for type=scan; the scan finds triggers on its own",
            field="evaluation.attack",
        )


def _check_config(body: JobCreate) -> Any:
    """The method's validated config, exactly as the worker will build it (torch-free)."""
    try:
        if body.type == "scan":
            return validate_config(ScanConfig, {"seed": body.seed, **body.hyperparameters})
        cfg = config_for(body.method, {"seed": body.seed, **body.hyperparameters})
        cfg.check_task(body.task)
        return cfg
    except ConfigError as exc:
        cause = exc.__cause__
        errors = (
            [
                {
                    "loc": ["body", "hyperparameters", *e["loc"]],
                    "message": e["msg"],
                    "type": e["type"],
                }
                for e in cause.errors()
            ]
            if isinstance(cause, ValidationError)
            else None
        )
        raise ApiError(
            422, exc.code, exc.message, hint=exc.hint, errors=errors, field="hyperparameters"
        ) from exc


def _tmp_root(settings: Settings) -> Path:
    p = settings.data_dir / "tmp"
    p.mkdir(parents=True, exist_ok=True)
    return p


def _request_hash(body: JobCreate) -> str:
    data = body.model_dump(mode="json")
    if body.evaluation and body.evaluation.target_label_names:  # excluded from dumps
        data["target_label_names"] = body.evaluation.target_label_names
    canon = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def _replay(s: SessionDep, project: Project, key: str, digest: str) -> Job | None:
    rec = s.scalar(
        select(IdempotencyRecord).where(
            IdempotencyRecord.project_id == project.id, IdempotencyRecord.key == key
        )
    )
    if rec is None:
        return None
    if rec.request_sha256 != digest:
        raise ApiError(
            422,
            "idempotency_key_reused",
            f"Idempotency-Key '{key}' was already used with a different request body",
            hint="use a new Idempotency-Key for a different job",
        )
    return s.get(Job, rec.job_id)


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
    digest = _request_hash(body)
    if idempotency_key:
        existing = _replay(s, project, idempotency_key, digest)
        if existing is not None:
            return JSONResponse(
                to_public(existing).model_dump(mode="json"),
                202,
                headers={"Idempotent-Replayed": "true"},
            )
    body = _check_inputs(body, s, project, settings, store)
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
        existing = _replay(s, project, idempotency_key or "", digest)
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


def _finished(job: Job, what: str) -> None:
    if job.status != st.SUCCEEDED:
        raise ApiError(
            409,
            f"{what}_not_ready",
            f"job '{job.id}' is {job.status}; the {what} exists once it has succeeded",
            hint=f"poll GET /v1/jobs/{job.id} until status is succeeded",
            status_now=job.status,
        )


@router.get("/{job_id}/report")
def get_report(job_id: str, project: ProjectDep, s: SessionDep, store: StoreDep) -> Any:
    """The report: ASR/CA before and after, config, hashes, seeds, timings, versions."""
    job = get_owned_job(s, project.id, job_id)
    _finished(job, "report")
    with store.open(f"jobs/{job.id}/report.json") as f:
        report = json.load(f)
    policy = _policy(job)
    if policy is not None:
        from sanitizer.report_html import check_policy

        report["verdict"] = {
            "policy": (job.spec or {}).get("policy"),
            **check_policy(report, policy).to_dict(),
        }
    return JSONResponse(report)


def _policy(job: Job) -> Any:
    """The job's release policy as the report renderer takes it, or None."""
    given = (job.spec or {}).get("policy")
    if not given:
        return None
    from sanitizer.report_html import Policy

    policy = Policy(max_asr=given.get("max_asr"), max_ca_drop=given.get("max_ca_drop"))
    return None if policy.is_empty() else policy


@router.get("/{job_id}/report.html", response_class=HTMLResponse)
def get_report_html(job_id: str, project: ProjectDep, s: SessionDep, store: StoreDep) -> Any:
    """The report as a self-contained HTML page."""
    job = get_owned_job(s, project.id, job_id)
    _finished(job, "report")
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
        render_report_html(report, policy=_policy(job), job=to_public(job).model_dump(mode="json"))
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
    _finished(job, "artifact")
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


def byte_range(
    header: str | None, if_range: str | None, size: int, etag: str
) -> tuple[int, int] | None:
    """The one byte range a ``Range`` header asks for, or None for the whole body (no header,
    several ranges, another unit, or an ``If-Range`` for an older version). Raises a 416 when
    the range lies outside the body."""
    if not header or (if_range is not None and if_range.strip() != etag):
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    try:
        if not dash or not (first or last) or not (first + last).isascii():
            raise ValueError
        if first:
            start = int(first)
            end = min(int(last), size - 1) if last else size - 1
        else:  # bytes=-N: the last N bytes
            start, end = max(0, size - int(last)), size - 1
    except ValueError:
        return None  # a malformed Range is ignored (RFC 9110 14.2)
    if start >= size or start > end:
        raise ApiError(
            416,
            "range_not_satisfiable",
            f"the range '{header}' lies outside the archive of {size} bytes",
            hint="resume with 'Range: bytes=N-' where N is the number of bytes you already have",
            headers={"Content-Range": f"bytes */{size}"},
        )
    return start, end
