"""Projects and API keys. A key is ``sk_<id>_<secret>``; only sha256(key) is stored and the
key is shown once, when created."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from base64 import b64encode
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from jobstore.models import ApiKey, Project, new_id, utcnow


def key_digest(key: str) -> str:
    """sha256 of a key: what is stored (and what an API process caches), never the key."""
    return hashlib.sha256(key.encode()).hexdigest()


_hash = key_digest


def get_or_create_project(s: Session, name: str) -> Project:
    project = s.scalar(select(Project).where(Project.name == name))
    if project is None:
        project = Project(
            id=new_id("proj"),
            name=name,
            webhook_secret="whsec_" + b64encode(secrets.token_bytes(24)).decode(),
        )
        s.add(project)
        s.flush()
    return project


def create_key(s: Session, project_name: str, name: str | None = None) -> tuple[ApiKey, str]:
    """Create a key for ``project_name`` (created if new); return the record and the key."""
    project = get_or_create_project(s, project_name)
    key_id = f"key{secrets.token_hex(6)}"
    key = f"sk_{key_id}_{secrets.token_urlsafe(24)}"
    record = ApiKey(id=key_id, project_id=project.id, key_hash=_hash(key), name=name)
    s.add(record)
    s.flush()
    return record, key


def install_key(s: Session, project_name: str, key: str) -> ApiKey:
    """Register a key chosen by the operator (``SANITIZER_API_KEY``) if it is not known yet."""
    parsed = parse_key(key)
    key_id = parsed[0] if parsed else f"key{_hash(key)[:12]}"
    record = s.get(ApiKey, key_id)
    if record is not None:
        return record
    project = get_or_create_project(s, project_name)
    record = ApiKey(id=key_id, project_id=project.id, key_hash=_hash(key), name="configured")
    s.add(record)
    s.flush()
    return record


def parse_key(key: str) -> tuple[str, str] | None:
    parts = key.split("_", 2)
    if len(parts) != 3 or parts[0] != "sk" or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def authenticate(s: Session, key: str) -> tuple[ApiKey, Project] | None:
    """The active key record for ``key`` and its project (one query), or None (unknown,
    wrong secret or revoked)."""
    parsed = parse_key(key)
    key_id = parsed[0] if parsed else f"key{_hash(key)[:12]}"
    row = s.execute(
        select(ApiKey, Project)
        .join(Project, ApiKey.project_id == Project.id)
        .where(ApiKey.id == key_id)
    ).first()
    if row is None:
        return None
    record, project = row
    if record.revoked_at is not None or not hmac.compare_digest(record.key_hash, _hash(key)):
        return None
    return record, project


def touch_key(key_id: str, when: datetime) -> None:
    """Record a key's last use (its own short session and commit)."""
    from jobstore.db import session_scope

    with session_scope() as s:
        s.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=when))


def revoke_key(s: Session, key_id: str) -> ApiKey | None:
    record = s.get(ApiKey, key_id)
    if record is not None and record.revoked_at is None:
        record.revoked_at = utcnow()
    return record


def list_keys(s: Session) -> list[tuple[ApiKey, Project]]:
    rows = s.execute(
        select(ApiKey, Project)
        .join(Project, ApiKey.project_id == Project.id)
        .order_by(ApiKey.created_at)
    )
    return [(k, p) for k, p in rows]
