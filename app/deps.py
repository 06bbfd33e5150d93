"""Dependencies, as ``Annotated`` aliases the routes use."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from app.problems import ApiError
from app.queue import Queue, get_queue
from jobstore.artifacts import ArtifactStore, get_store
from jobstore.db import session_factory
from jobstore.keys import authenticate
from jobstore.models import ApiKey, Project, utcnow
from jobstore.settings import Settings, get_settings


def get_db() -> Iterator[Session]:
    with session_factory()() as s:
        yield s


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
QueueDep = Annotated[Queue, Depends(get_queue)]


def current_project(request: Request, s: SessionDep) -> Project:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    challenge = {"WWW-Authenticate": "Bearer"}
    if scheme.lower() != "bearer" or not key.strip():
        raise ApiError(
            401,
            "missing_api_key",
            "this endpoint needs an API key",
            hint="send 'Authorization: Bearer <key>'; create one with `sanitizer keys create`",
            headers=challenge,
        )
    record: ApiKey | None = authenticate(s, key.strip())
    if record is None:
        raise ApiError(
            401,
            "invalid_api_key",
            "the API key is unknown or has been revoked",
            hint="check the key, or create a new one with `sanitizer keys create`",
            headers=challenge,
        )
    now = utcnow()
    last = record.last_used_at
    if (
        last is None
        or (now - (last if last.tzinfo else last.replace(tzinfo=now.tzinfo))).total_seconds() > 60
    ):
        record.last_used_at = now  # at most one write a minute per key: polling stays cheap
        s.commit()
    project = s.get(Project, record.project_id)
    assert project is not None
    return project


ProjectDep = Annotated[Project, Depends(current_project)]
