"""Jobs as the API shows them, ownership, idempotent replays, and finished-job checks."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.problems import ApiError, not_found
from app.schemas import (
    AdapterArtifact,
    JobCreate,
    JobError,
    JobPublic,
    Progress,
)
from jobstore import status as st
from jobstore.models import IdempotencyRecord, Job, Project


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
        unlabeled_dataset_file=job.unlabeled_dataset_file_id,
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


def get_owned_job(s: Session, project_id: str, job_id: str) -> Job:
    job = s.get(Job, job_id)
    if job is None or job.project_id != project_id:
        raise not_found("job", job_id)
    return job


def request_hash(body: JobCreate) -> str:
    data = body.model_dump(mode="json")
    if body.evaluation and body.evaluation.target_label_names:  # excluded from dumps
        data["target_label_names"] = body.evaluation.target_label_names
    canon = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()


def replay(s: Session, project: Project, key: str, digest: str) -> Job | None:
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


def require_finished(job: Job, what: str) -> None:
    if job.status != st.SUCCEEDED:
        raise ApiError(
            409,
            f"{what}_not_ready",
            f"job '{job.id}' is {job.status}; the {what} exists once it has succeeded",
            hint=f"poll GET /v1/jobs/{job.id} until status is succeeded",
            status_now=job.status,
        )


def job_policy(job: Job) -> Any:
    """The job's release policy as the report renderer takes it, or None."""
    given = (job.spec or {}).get("policy")
    if not given:
        return None
    from sanitizer.report_html import Policy

    policy = Policy(max_asr=given.get("max_asr"), max_ca_drop=given.get("max_ca_drop"))
    return None if policy.is_empty() else policy
