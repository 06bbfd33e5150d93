"""The job status machine. Every status change goes through ``transition``.

    validating -> queued -> running -> succeeded | failed | cancelling -> cancelled

``running -> queued`` is the reaper re-running a job whose worker died; ``queued ->
cancelled`` is a cancel before any worker picked the job up.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, update
from sqlalchemy.orm import Session

from jobstore.models import Job, utcnow

VALIDATING, QUEUED, RUNNING = "validating", "queued", "running"
SUCCEEDED, FAILED, CANCELLING, CANCELLED = "succeeded", "failed", "cancelling", "cancelled"

STATUSES = (VALIDATING, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLING, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE = frozenset({VALIDATING, QUEUED, RUNNING, CANCELLING})

ALLOWED: dict[str, frozenset[str]] = {
    VALIDATING: frozenset({QUEUED, FAILED}),
    QUEUED: frozenset({RUNNING, FAILED, CANCELLED}),
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLING, QUEUED}),
    # a job may finish before it notices the cancel request; a lost worker ends it cancelled
    CANCELLING: frozenset({CANCELLED, SUCCEEDED, FAILED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}


class IllegalTransition(Exception):
    def __init__(self, job_id: str, old: str, new: str) -> None:
        super().__init__(f"job {job_id}: {old} -> {new} is not allowed")
        self.job_id, self.old, self.new = job_id, old, new


def can_transition(old: str, new: str) -> bool:
    return new in ALLOWED.get(old, frozenset())


def _changes(new: str, error_code: str | None, error_message: str | None) -> dict[str, object]:
    """Column values that go with entering ``new``."""
    now = utcnow()
    values: dict[str, object] = {"status": new}
    if new == QUEUED:
        values.update(queued_at=now, dispatched_at=None, started_at=None, heartbeat_at=None)
        values["worker"] = None
    elif new == RUNNING:
        values.update(started_at=now, heartbeat_at=now)
    elif new in TERMINAL:
        values["finished_at"] = now
    if new == FAILED:
        values["error_code"] = error_code or "internal_error"
        values["error_message"] = error_message or "the job failed"
    elif error_code:
        values.update(error_code=error_code, error_message=error_message)
    return values


def transition(
    job: Job, new: str, *, error_code: str | None = None, error_message: str | None = None
) -> None:
    """Move ``job`` to ``new`` (in memory; the caller commits) and stamp the timestamps."""
    if not can_transition(job.status, new):
        raise IllegalTransition(job.id, job.status, new)
    for k, v in _changes(new, error_code, error_message).items():
        setattr(job, k, v)


def compare_and_set(
    s: Session,
    job_id: str,
    old: str | Iterable[str],
    new: str,
    *,
    error_code: str | None = None,
    error_message: str | None = None,
    where: Iterable[ColumnElement[bool]] = (),
    **extra: object,
) -> bool:
    """Atomically move the job to ``new`` if it is still in ``old`` (one UPDATE ... WHERE
    status IN old): the way workers, the reaper and cancel race safely across processes.
    Returns whether this caller won. Illegal ``old -> new`` pairs raise."""
    olds = [old] if isinstance(old, str) else list(old)
    for o in olds:
        if not can_transition(o, new):
            raise IllegalTransition(job_id, o, new)
    values = _changes(new, error_code, error_message) | extra
    stmt = (
        update(Job)
        .where(Job.id == job_id, Job.status.in_(olds), *where)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    result = cast(CursorResult[Any], s.execute(stmt))  # an UPDATE: rowcount is defined
    return result.rowcount == 1
