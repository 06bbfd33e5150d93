"""Tasks: ids in, nothing out (results live in the job store). The logic is in
``workers.runner`` and ``workers.webhooks``."""

from __future__ import annotations

from sqlalchemy.exc import OperationalError

from workers.celery_app import celery_app


@celery_app.task(
    name="sanitizer.sanitize",
    bind=True,
    # only the database being briefly unreachable is worth a retry; user errors and
    # defense failures are recorded on the job instead
    autoretry_for=(OperationalError,),
    retry_backoff=2,
    retry_backoff_max=60,
    max_retries=5,
)
def sanitize(self, job_id: str, attempt: int) -> str:  # type: ignore[no-untyped-def]
    from workers.runner import run_job

    return run_job(job_id, attempt, worker=self.request.hostname or "worker")


@celery_app.task(name="sanitizer.deliver_webhook", bind=True, max_retries=None)
def deliver_webhook(self, delivery_id: str) -> str:  # type: ignore[no-untyped-def]
    from workers.webhooks import RetryLater, deliver

    try:
        return deliver(delivery_id)
    except RetryLater as exc:
        raise self.retry(countdown=exc.delay, max_retries=None) from exc
