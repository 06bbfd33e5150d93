"""Job-store operations the API, the workers and the reaper share."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from jobstore import status as st
from jobstore.models import Job, JobEvent, utcnow

log = logging.getLogger(__name__)

Enqueue = Callable[[str, int], bool]  # (job_id, attempt) -> published?


def add_event(
    s: Session,
    job_id: str,
    message: str,
    *,
    level: str = "info",
    phase: str | None = None,
    metrics: dict[str, Any] | None = None,
) -> JobEvent:
    ev = JobEvent(job_id=job_id, message=message, level=level, phase=phase, metrics=metrics or {})
    s.add(ev)
    return ev


def dispatch(factory: sessionmaker[Session], job_id: str, attempt: int, enqueue: Enqueue) -> bool:
    """Publish the job's task; on success remember it was handed to the broker."""
    if not enqueue(job_id, attempt):
        return False
    with factory() as s:
        job = s.get(Job, job_id)
        if job is not None and job.status == st.QUEUED and job.attempt == attempt:
            job.dispatched_at = utcnow()
            s.commit()
    return True


def reap(
    factory: sessionmaker[Session],
    enqueue: Enqueue,
    *,
    heartbeat_timeout: float,
    max_attempts: int,
    dispatch_grace: float = 10.0,
    redispatch_after: float | None = None,
    time_limit: float | None = None,
) -> dict[str, list[str]]:
    """One pass of the reaper.

    - ``running``/``cancelling`` jobs whose heartbeat is older than ``heartbeat_timeout``
      lost their worker: re-queued (new attempt, re-run from a clean state) while
      ``attempt < max_attempts``, else failed with ``worker_lost``; cancelling ones end
      cancelled. A lost job that started more than ``time_limit`` seconds ago is not re-run:
      the hard time limit killed it, and it fails with ``time_limit``.
    - ``queued`` jobs the broker never accepted (it was down at submit time) are published.
    - ``queued`` jobs published more than ``redispatch_after`` seconds ago are published
      again, at most once per that period: a broker that keeps nothing on disk loses its
      messages when it restarts, and the job would otherwise wait forever. A duplicate is
      harmless: the worker's atomic queued -> running claim lets exactly one copy run.
    """
    now = utcnow()
    done: dict[str, list[str]] = {"requeued": [], "failed": [], "cancelled": [], "dispatched": []}
    stale_before = now - timedelta(seconds=heartbeat_timeout)
    with factory() as s:
        stale = s.execute(
            select(Job.id, Job.status, Job.attempt, Job.started_at).where(
                Job.status.in_([st.RUNNING, st.CANCELLING]), Job.heartbeat_at < stale_before
            )
        ).all()
    for job_id, status, attempt, started_at in stale:
        over_time = (
            time_limit is not None
            and started_at is not None
            and started_at < now - timedelta(seconds=time_limit)
        )
        alive = [Job.heartbeat_at < stale_before, Job.attempt == attempt]
        fields: dict[str, Any] = {}
        if status == st.CANCELLING:
            target, key, msg = (
                st.CANCELLED,
                "cancelled",
                "worker lost while cancelling; job cancelled",
            )
        elif over_time:
            target, key, msg = st.FAILED, "failed", "time limit exceeded; not re-run"
            fields = {
                "error_code": "time_limit",
                "error_message": f"the job ran past the {time_limit:g}s time limit and its "
                "worker was stopped; raise SANITIZER_JOB_TIME_LIMIT or reduce epochs/data",
            }
        elif attempt < max_attempts:
            target, key = st.QUEUED, "requeued"
            msg = (
                f"worker lost (no heartbeat for {heartbeat_timeout:g}s); re-running from a "
                f"clean state (attempt {attempt + 1} of {max_attempts})"
            )
            fields = {"attempt": attempt + 1, "progress": None}
        else:
            target, key, msg = st.FAILED, "failed", "worker lost; no attempts left"
            fields = {
                "error_code": "worker_lost",
                "error_message": f"the worker running this job stopped responding {attempt} "
                f"time(s); giving up after {max_attempts} attempt(s)",
            }
        with factory() as s:
            won = st.compare_and_set(s, job_id, status, target, where=alive, **fields)
            if won:
                add_event(s, job_id, msg, level="warning")
            s.commit()
        if won:
            log.warning("reaper: job %s %s", job_id, key)
            done[key].append(job_id)
            if key == "requeued":
                dispatch(factory, job_id, attempt + 1, enqueue)
    never_sent = Job.dispatched_at.is_(None) & (
        Job.queued_at < now - timedelta(seconds=dispatch_grace)
    )
    if redispatch_after is not None:
        never_sent = never_sent | (Job.dispatched_at < now - timedelta(seconds=redispatch_after))
    with factory() as s:
        pending = s.execute(
            select(Job.id, Job.attempt).where(Job.status == st.QUEUED, never_sent)
        ).all()
    for job_id, attempt in pending:
        if dispatch(factory, job_id, attempt, enqueue):
            done["dispatched"].append(job_id)
    return done
