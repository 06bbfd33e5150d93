"""Uploaded files: which job uses one, and the retention sweep (``SANITIZER_FILE_RETENTION_DAYS``)."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from jobstore import status as st
from jobstore.artifacts import ArtifactStore
from jobstore.models import File, Job, utcnow

log = logging.getLogger(__name__)


def active_user(s: Session, file_id: str) -> str | None:
    """The id of an active (not finished) job that reads the file, if any."""
    ref = or_(*(getattr(Job, c) == file_id for c in Job.INPUT_FILE_COLUMNS))
    return s.scalar(select(Job.id).where(ref, Job.status.in_(st.ACTIVE)).limit(1))


def delete_file(s: Session, store: ArtifactStore, f: File) -> None:
    """The record first (committed), then the blob: a crash in between leaves an orphan blob
    under ``files/<id>``, never a record that points at nothing."""
    s.delete(f)
    s.commit()
    store.delete_prefix(f"files/{f.id}")


def expire_files(factory: sessionmaker[Session], store: ArtifactStore, days: float) -> list[str]:
    """Delete files uploaded more than ``days`` ago that no active job reads; their ids.
    Finished jobs keep their reports and outputs (those are the job's, not the upload's)."""
    cutoff = utcnow() - timedelta(days=days)
    gone: list[str] = []
    with factory() as s:
        for f in s.scalars(select(File).where(File.created_at < cutoff).limit(500)).all():
            if active_user(s, f.id) is None:
                delete_file(s, store, f)
                gone.append(f.id)
    if gone:
        log.info("retention: deleted %d file(s) older than %g days", len(gone), days)
    return gone
