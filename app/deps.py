"""Dependencies, as ``Annotated`` aliases the routes use."""

from __future__ import annotations

from collections.abc import AsyncIterator
from functools import lru_cache
from typing import Annotated

from cachetools import TTLCache
from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.problems import ApiError
from app.queue import Queue, get_queue
from jobstore.artifacts import ArtifactStore, get_store
from jobstore.db import session_factory
from jobstore.keys import authenticate, key_digest, touch_key
from jobstore.models import ApiKey, Project, utcnow
from jobstore.settings import Settings, get_settings


async def get_db() -> AsyncIterator[Session]:
    # Opened and closed on the event loop (no thread hop): a session is lazy, it takes a
    # pooled connection at its first query. Routes declared ``def`` use it from the
    # threadpool, one at a time, which a Session allows.
    with session_factory()() as s:
        yield s


SessionDep = Annotated[Session, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]
QueueDep = Annotated[Queue, Depends(get_queue)]


@lru_cache
def _verified(ttl: float) -> TTLCache[str, tuple[ApiKey, Project]]:
    """sha256(key) -> (key, project) verified less than ``ttl`` seconds ago (detached
    records; routes read ``project.id``/``name``/``webhook_secret`` only)."""
    return TTLCache(maxsize=4096, ttl=ttl)


def _authenticate(s: Session, key: str, ttl: float) -> tuple[ApiKey, Project] | None:
    if ttl <= 0:
        return authenticate(s, key)
    cache = _verified(ttl)
    digest = key_digest(key)
    hit = cache.get(digest)
    if hit is None:
        hit = authenticate(s, key)
        if hit is not None:
            cache[digest] = hit
    return hit


async def current_project(request: Request, s: SessionDep) -> Project:
    """The caller's project, from its API key: one indexed read (key joined to project) on
    the event loop; the at-most-once-a-minute ``last_used_at`` write goes to the threadpool,
    so a write waiting on a busy SQLite never stalls the loop."""
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
    found = _authenticate(s, key.strip(), get_settings().auth_cache_seconds)
    if found is None:
        raise ApiError(
            401,
            "invalid_api_key",
            "the API key is unknown or has been revoked",
            hint="check the key, or create a new one with `sanitizer keys create`",
            headers=challenge,
        )
    record, project = found
    now = utcnow()
    last = record.last_used_at
    if (
        last is None
        or (now - (last if last.tzinfo else last.replace(tzinfo=now.tzinfo))).total_seconds() > 60
    ):
        record.last_used_at = now  # the cached record too: at most one write a minute per key
        await run_in_threadpool(touch_key, record.id, now)
    return project


ProjectDep = Annotated[Project, Depends(current_project)]
