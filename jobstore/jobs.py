"""Job-store operations the API, the workers and the reaper share."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
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


def finish(
    s: Session,
    job_id: str,
    olds: str | list[str],
    new: str,
    message: str,
    send_webhook: Callable[[str], object] | None,
    *,
    level: str | None = None,
    **fields: Any,
) -> bool:
    """End a job: the status change (compare-and-set from ``olds``), its event, and its
    webhook delivery, created in the same transaction and then handed to ``send_webhook``
    (the API's queue, or the worker's by task name). The one path for the worker, a cancel
    and the reaper. False (nothing done) when the job was no longer in ``olds``."""
    from jobstore.webhooks import create_delivery

    if not st.compare_and_set(s, job_id, olds, new, **fields):
        return False
    add_event(
        s, job_id, message, level=level or ("error" if new == st.FAILED else "info"), phase=new
    )
    s.flush()
    job = s.get(Job, job_id)
    if job is not None:
        s.refresh(job)
    delivery = create_delivery(s, job) if job is not None else None
    s.commit()
    if delivery and send_webhook is not None:
        try:
            send_webhook(delivery)
        except Exception:  # the job's outcome stands; only its notification is lost
            log.exception("could not queue webhook %s", delivery)
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
    broker_started_at: datetime | None = None,
    send_webhook: Callable[[str], object] | None = None,
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
    - ``queued`` jobs published before ``broker_started_at`` (the broker's own start time, when
      it can tell) are published again at once: a restart the broker shows need not wait for
      ``redispatch_after``. Each re-publication leaves an event on the job saying why.
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
            if target == st.QUEUED:  # not an end: no webhook
                won = st.compare_and_set(s, job_id, status, target, where=alive, **fields)
                if won:
                    add_event(s, job_id, msg, level="warning")
                s.commit()
            else:
                won = finish(
                    s,
                    job_id,
                    status,
                    target,
                    msg,
                    send_webhook,
                    level="warning",
                    where=alive,
                    **fields,
                )
        if won:
            log.warning("reaper: job %s %s", job_id, key)
            done[key].append(job_id)
            if key == "requeued":
                dispatch(factory, job_id, attempt + 1, enqueue)
    never_sent = Job.dispatched_at.is_(None) & (
        Job.queued_at < now - timedelta(seconds=dispatch_grace)
    )
    waiting = never_sent
    if redispatch_after is not None:
        waiting = waiting | (Job.dispatched_at < now - timedelta(seconds=redispatch_after))
    if broker_started_at is not None:
        waiting = waiting | (Job.dispatched_at < _naive_like(broker_started_at, now))
    with factory() as s:
        pending = s.execute(
            select(Job.id, Job.attempt, Job.dispatched_at).where(Job.status == st.QUEUED, waiting)
        ).all()
    for job_id, attempt, sent_at in pending:
        if not dispatch(factory, job_id, attempt, enqueue):
            continue
        done["dispatched"].append(job_id)
        if sent_at is None:
            continue
        sent_at = _naive_like(sent_at, now)
        if broker_started_at is not None and sent_at < _naive_like(broker_started_at, now):
            why = "the broker restarted after this job was sent to it, so its message was lost"
        else:
            why = (
                f"still queued {(now - sent_at).total_seconds():.0f}s after it was sent to the "
                "broker (the message may have been lost in a broker restart)"
            )
        with factory() as s:
            add_event(s, job_id, f"{why}; sent again", level="warning")
            s.commit()
    return done


def _naive_like(t: datetime, ref: datetime) -> datetime:
    """``t`` comparable with ``ref`` (SQLite hands back naive UTC datetimes)."""
    if (t.tzinfo is None) == (ref.tzinfo is None):
        return t
    return t.replace(tzinfo=None) if ref.tzinfo is None else t.replace(tzinfo=UTC)
