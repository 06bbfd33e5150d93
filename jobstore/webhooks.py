"""Webhook delivery records: one per finished job with a ``webhook_url``.

The payload follows Standard Webhooks: ``{"type": "job.succeeded", "timestamp": ...,
"data": {...job summary...}}``; the worker signs and POSTs it (workers.webhooks).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from jobstore import status as st
from jobstore.models import Job, WebhookDelivery, new_id, utcnow


def job_summary(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "object": "job",
        "status": job.status,
        "method": job.method,
        "base_model": job.base_model,
        "metadata": job.meta or {},
        "error": {"code": job.error_code, "message": job.error_message} if job.error_code else None,
        "artifact_sha256": job.artifact_sha256,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def create_delivery(s: Session, job: Job) -> str | None:
    """Record the webhook for a job that just finished; return its id (None: no webhook)."""
    if not job.webhook_url or job.status not in st.TERMINAL:
        return None
    event_type = f"job.{job.status}"
    delivery = WebhookDelivery(
        id=new_id("msg"),
        job_id=job.id,
        event_type=event_type,
        url=job.webhook_url,
        payload={"type": event_type, "timestamp": utcnow().isoformat(), "data": job_summary(job)},
    )
    s.add(delivery)
    s.flush()
    return delivery.id
