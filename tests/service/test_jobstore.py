"""The job store: status machine, migrations equal the models, atomic artifacts, the reaper."""

from __future__ import annotations

import itertools
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from jobstore import status as st


def test_transitions_are_exactly_the_documented_ones():
    allowed = {(a, b) for a, bs in st.ALLOWED.items() for b in bs}
    assert allowed == {
        ("validating", "queued"),
        ("validating", "failed"),
        ("queued", "running"),
        ("queued", "failed"),
        ("queued", "cancelled"),
        ("running", "succeeded"),
        ("running", "failed"),
        ("running", "cancelling"),
        ("running", "queued"),
        ("cancelling", "cancelled"),
        ("cancelling", "succeeded"),
        ("cancelling", "failed"),
    }
    from jobstore.models import Job

    for old, new in itertools.product(st.STATUSES, repeat=2):
        job = Job(id="job_x", status=old)
        if (old, new) in allowed:
            st.transition(job, new)
            assert job.status == new
        else:
            with pytest.raises(st.IllegalTransition):
                st.transition(job, new)
            assert job.status == old


def test_migrations_match_models(service_env):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from jobstore.db import get_engine, upgrade
    from jobstore.models import Base

    upgrade()
    with get_engine().connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_artifact_store_never_leaves_half_files(tmp_path, monkeypatch):
    from jobstore.artifacts import LocalArtifactStore

    store = LocalArtifactStore(tmp_path)
    sha = store.put_bytes("jobs/j1/report.json", b"{}")
    assert store.exists("jobs/j1/report.json") and len(sha) == 64

    def crash(*a, **k):
        raise OSError("disk died")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.put_bytes("jobs/j1/adapter.zip", b"x" * 1000)
    assert sorted(p.name for p in (tmp_path / "jobs" / "j1").iterdir()) == ["report.json"]
    with pytest.raises(ValueError):
        store.path("../outside")


def add_job(s: Any, job_id: str, *, running: bool = False, **fields: Any) -> Any:
    """A queued job row (a project 'p' is created on demand); ``running`` moves it on."""
    from jobstore.keys import get_or_create_project
    from jobstore.models import Job

    values = {
        "status": "queued",
        "method": "finetune",
        "task": "classification",
        "base_model": "m",
        "clean_dataset_file_id": "f",
        "attempt": 1,
    }
    job = Job(id=job_id, project_id=get_or_create_project(s, "p").id, **values)
    s.add(job)
    s.flush()
    if running:
        st.transition(job, st.RUNNING)
    for k, v in fields.items():
        setattr(job, k, v)
    return job


@pytest.mark.parametrize("where", ["base_model", "teacher_model"])
def test_worker_refuses_a_model_given_as_a_folder(service_env, assets, where):
    """The API takes model ids only; a job row naming a folder on the worker's disk (written
    some other way) fails with unknown_model instead of loading whatever that folder holds."""
    from jobstore.db import session_scope, upgrade
    from jobstore.models import Job
    from workers.runner import run_job

    folder = str(assets["store"] / "tiny--bert")  # a real model folder, by absolute path
    upgrade()
    with session_scope() as s:
        if where == "base_model":
            add_job(s, "job_p", base_model=folder)
        else:
            add_job(
                s,
                "job_p",
                base_model="tiny/bert",
                method="w2sdefense",
                spec={"hyperparameters": {"teacher_model": folder}},
            )
    assert run_job("job_p", 1) == "failed"
    with session_scope() as s:
        job = s.get(Job, "job_p")
        assert job.status == "failed" and job.error_code == "unknown_model", job.error_message
        assert "not a valid model id" in job.error_message


def test_reaper_requeues_then_fails_stale_jobs(service_env):
    from jobstore.db import session_factory, session_scope, upgrade
    from jobstore.jobs import reap
    from jobstore.models import Job, utcnow

    upgrade()
    with session_scope() as s:
        add_job(s, "job_r", running=True, heartbeat_at=utcnow() - timedelta(seconds=100))
    sent: list[tuple[str, int]] = []
    enqueue = lambda jid, attempt: sent.append((jid, attempt)) or True  # noqa: E731
    done = reap(session_factory(), enqueue, heartbeat_timeout=10, max_attempts=2)
    assert done["requeued"] == ["job_r"] and sent == [("job_r", 2)]
    with session_scope() as s:
        job = s.get(Job, "job_r")
        assert job.status == "queued" and job.attempt == 2 and job.dispatched_at is not None
        st.transition(job, st.RUNNING)
        job.heartbeat_at = utcnow() - timedelta(seconds=100)
    done = reap(session_factory(), enqueue, heartbeat_timeout=10, max_attempts=2)
    assert done["failed"] == ["job_r"]
    with session_scope() as s:
        job = s.get(Job, "job_r")
        assert job.status == "failed" and job.error_code == "worker_lost"
    # a fresh heartbeat is left alone
    assert reap(session_factory(), enqueue, heartbeat_timeout=10, max_attempts=2)["failed"] == []


def test_reaper_republishes_a_queued_job_whose_message_was_lost(service_env):
    """Redis without persistence forgets its queue on restart: the job must not wait forever,
    and a job still waiting its turn is re-published at most once per period."""
    from jobstore.db import session_factory, session_scope, upgrade
    from jobstore.jobs import reap
    from jobstore.models import utcnow

    upgrade()
    with session_scope() as s:
        for jid, age in (("job_lost", 1000), ("job_fresh", 5)):
            then = utcnow() - timedelta(seconds=age)
            add_job(s, jid, queued_at=then, dispatched_at=then)
    sent: list[tuple[str, int]] = []
    enqueue = lambda jid, attempt: sent.append((jid, attempt)) or True  # noqa: E731
    kw = {"heartbeat_timeout": 10, "max_attempts": 2, "redispatch_after": 600}
    assert reap(session_factory(), enqueue, **kw)["dispatched"] == ["job_lost"]
    assert sent == [("job_lost", 1)]
    from jobstore.models import JobEvent

    with session_scope() as s:
        (event,) = s.query(JobEvent).filter_by(job_id="job_lost").all()
        assert "still queued 1000s" in event.message and event.level == "warning"
    # published again just now: the next pass leaves it alone
    assert reap(session_factory(), enqueue, **kw)["dispatched"] == []
    # without the setting, a published job is never re-published (the old behaviour)
    assert (
        reap(session_factory(), enqueue, heartbeat_timeout=10, max_attempts=2)["dispatched"] == []
    )


def test_a_visible_broker_restart_republishes_at_once_and_says_why(service_env):
    """Issue 23 item 7: a lost message used to wait redispatch_after (900 s) with no event."""
    from jobstore.db import session_factory, session_scope, upgrade
    from jobstore.jobs import reap
    from jobstore.models import JobEvent, utcnow

    upgrade()
    with session_scope() as s:
        for jid, age in (("job_before", 60), ("job_after", 5), ("job_old", 2000)):
            then = utcnow() - timedelta(seconds=age)
            add_job(s, jid, queued_at=then, dispatched_at=then)
    sent: list[tuple[str, int]] = []
    enqueue = lambda jid, attempt: sent.append((jid, attempt)) or True  # noqa: E731
    kw = {"heartbeat_timeout": 10, "max_attempts": 2, "redispatch_after": 900}
    restarted = utcnow() - timedelta(seconds=30)  # after job_before was sent, before job_after
    done = reap(session_factory(), enqueue, broker_started_at=restarted, **kw)
    assert sorted(done["dispatched"]) == ["job_before", "job_old"]
    with session_scope() as s:
        events = {e.job_id: e.message for e in s.query(JobEvent).all()}
    assert "broker restarted" in events["job_before"] and "sent again" in events["job_before"]
    assert "broker restarted" in events["job_old"]
    assert "job_after" not in events
    # the broker's start time stays put: nothing is sent twice
    assert reap(session_factory(), enqueue, broker_started_at=restarted, **kw)["dispatched"] == []


def test_the_queue_reads_the_broker_start_time_from_redis(service_env, redis_url, monkeypatch):
    from datetime import UTC, datetime

    import redis

    from app.queue import Queue
    from jobstore.settings import Settings

    monkeypatch.setenv("REDIS_URL", redis_url)
    started = Queue(Settings()).broker_started_at()
    uptime = redis.Redis.from_url(redis_url).info("server")["uptime_in_seconds"]
    assert started is not None
    assert abs((datetime.now(UTC) - started).total_seconds() - uptime) < 5


def test_reaper_fails_a_job_killed_by_the_hard_time_limit(service_env):
    """A worker child killed at the hard limit looks like a lost worker; re-running the job
    would hit the limit again, so it fails with time_limit instead."""
    from jobstore.db import session_factory, session_scope, upgrade
    from jobstore.jobs import reap
    from jobstore.models import Job, utcnow

    upgrade()
    with session_scope() as s:
        add_job(
            s,
            "job_t",
            running=True,
            started_at=utcnow() - timedelta(seconds=5000),
            heartbeat_at=utcnow() - timedelta(seconds=100),
        )
    sent: list[tuple[str, int]] = []
    enqueue = lambda jid, attempt: sent.append((jid, attempt)) or True  # noqa: E731
    done = reap(session_factory(), enqueue, heartbeat_timeout=10, max_attempts=2, time_limit=3600)
    assert done["failed"] == ["job_t"] and done["requeued"] == [] and sent == []
    with session_scope() as s:
        job = s.get(Job, "job_t")
        assert job.status == "failed" and job.error_code == "time_limit"
        assert "SANITIZER_JOB_TIME_LIMIT" in job.error_message


def test_compare_and_set_has_one_winner(service_env):
    from jobstore.db import session_scope, upgrade

    upgrade()
    with session_scope() as s:
        add_job(s, "job_c")
    with session_scope() as s:
        assert st.compare_and_set(s, "job_c", st.QUEUED, st.RUNNING)
    with session_scope() as s:
        assert not st.compare_and_set(s, "job_c", st.QUEUED, st.RUNNING)
        with pytest.raises(st.IllegalTransition):
            st.compare_and_set(s, "job_c", st.SUCCEEDED, st.RUNNING)


def test_keys_are_stored_hashed(service_env):
    from jobstore.db import session_scope, upgrade
    from jobstore.keys import authenticate, create_key, revoke_key

    upgrade()
    with session_scope() as s:
        rec, key = create_key(s, "p")
        assert key not in (rec.key_hash, rec.id) and key.startswith(f"sk_{rec.id}_")
        assert authenticate(s, key)[0].id == rec.id
        assert authenticate(s, key + "x") is None
        revoke_key(s, rec.id)
        assert authenticate(s, key) is None


def test_keys_commands_json(service_env):
    """`sanitizer keys create --json` gives scripts the key; list never shows it; revoke works."""
    import json

    from typer.testing import CliRunner

    from jobstore.db import session_scope
    from jobstore.keys import authenticate
    from sanitizer_cli.main import app

    runner = CliRunner()
    r = runner.invoke(app, ["keys", "create", "--project", "ci", "--name", "bot", "--json"])
    assert r.exit_code == 0, r.output
    created = json.loads(r.stdout)
    assert created["project"] == "ci" and created["name"] == "bot"
    assert created["key"].startswith(f"sk_{created['id']}_")
    with session_scope() as s:
        assert authenticate(s, created["key"])[0].id == created["id"]
    r = runner.invoke(app, ["keys", "list", "--json"])
    listed = json.loads(r.stdout)
    assert [k["id"] for k in listed if k["project"] == "ci"] == [created["id"]]
    assert created["key"] not in r.stdout and listed[-1]["revoked_at"] is None
    assert runner.invoke(app, ["keys", "revoke", created["id"]]).exit_code == 0
    with session_scope() as s:
        assert authenticate(s, created["key"]) is None


def test_settings_accept_plain_env_names(monkeypatch, tmp_path):
    from jobstore.settings import Settings

    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("REDIS_URL", "redis://h:6379/2")
    monkeypatch.setenv("SANITIZER_DATA_DIR", str(tmp_path))
    s = Settings()
    assert (
        s.db_url == "postgresql://u@h/db" and s.broker_url == "redis://h:6379/2" and not s.embedded
    )
    assert s.visibility_timeout > s.job_time_limit
    monkeypatch.delenv("REDIS_URL")
    monkeypatch.delenv("DATABASE_URL")
    s = Settings()
    assert (
        s.embedded
        and s.broker_url.startswith("sqla+sqlite:///")
        and s.db_url.startswith("sqlite:///")
    )
    assert Path(s.db_url.split("///")[1]).parent == tmp_path


def test_celery_config_for_long_gpu_jobs():
    from workers.celery_app import celery_app

    c = celery_app.conf
    assert c.task_acks_late and c.task_reject_on_worker_lost
    assert c.worker_prefetch_multiplier == 1 and c.worker_max_tasks_per_child == 1
    assert c.task_soft_time_limit < c.task_time_limit
    assert (
        c.task_routes["sanitizer.sanitize"]["queue"]
        and c.task_routes["sanitizer.deliver_webhook"]["queue"]
    )
    import subprocess
    import sys

    code = "import sys, workers.celery_app, workers.tasks; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # the worker parent never imports torch before fork


def test_serve_banner_shows_the_key_only_at_a_terminal():
    from sanitizer_cli.service_commands import _key_line

    key = "sk-secret-123"
    assert key in _key_line(key, "/data/api_key", to_terminal=True)
    piped = _key_line(key, "/data/api_key", to_terminal=False)
    assert key not in piped and "/data/api_key" in piped
    assert key not in _key_line(key, "SANITIZER_API_KEY", to_terminal=True)


def test_retention_deletes_old_files_no_active_job_reads(service_env, tmp_path):
    from jobstore.artifacts import LocalArtifactStore
    from jobstore.db import session_factory, session_scope, upgrade
    from jobstore.files import expire_files
    from jobstore.keys import get_or_create_project
    from jobstore.models import File, utcnow

    upgrade()
    store = LocalArtifactStore(tmp_path / "artifacts")
    src = tmp_path / "blob"
    with session_scope() as s:
        pid = get_or_create_project(s, "p").id
        for fid, age_days in (("file_old", 40), ("file_busy", 40), ("file_new", 1)):
            src.write_bytes(fid.encode())
            store.put_file(f"files/{fid}/x.csv", src)
            s.add(
                File(
                    id=fid,
                    project_id=pid,
                    purpose="dataset",
                    filename="x.csv",
                    bytes=8,
                    sha256="0" * 64,
                    storage_key=f"files/{fid}/x.csv",
                    info={},
                    created_at=utcnow() - timedelta(days=age_days),
                )
            )
        s.flush()
        add_job(s, "job_reads", clean_dataset_file_id="file_busy")  # queued: still active
    assert expire_files(session_factory(), store, 30) == ["file_old"]
    with session_scope() as s:
        assert {f.id for f in s.query(File).all()} == {"file_busy", "file_new"}
    assert not store.exists("files/file_old/x.csv")
    assert store.exists("files/file_busy/x.csv") and store.exists("files/file_new/x.csv")
