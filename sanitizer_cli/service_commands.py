"""Service commands: serve (embedded API + worker), worker, keys, db.

Heavy imports (uvicorn, celery, sqlalchemy) happen inside the commands.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import typer

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
models_app = typer.Typer(
    help="Base models shared with every worker host through the artifact store.",
    no_args_is_help=True,
)

DEFAULT_PROJECT = "default"


def _apply_env(data_dir: Path | None) -> None:
    if data_dir is not None:
        os.environ["SANITIZER_DATA_DIR"] = str(data_dir.resolve())
    from jobstore.settings import get_settings

    get_settings.cache_clear()


def worker_argv(queues: str | None, concurrency: int, name: str = "worker") -> list[str]:
    from jobstore.settings import get_settings

    s = get_settings()
    return [
        "worker",
        "--queues",
        queues or f"{s.queue},{s.webhooks_queue}",
        "--concurrency",
        str(concurrency),
        "--loglevel",
        os.environ.get("SANITIZER_LOG_LEVEL", "INFO"),
        "--hostname",
        f"{name}-{os.getpid()}@%h",
        "--without-gossip",
        "--without-mingle",
    ]


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _embedded_key() -> tuple[str, str]:
    """(key, where it came from): SANITIZER_API_KEY if set, else the key this data dir was
    given on first start (kept in <data_dir>/api_key, mode 600)."""
    from jobstore.db import session_scope
    from jobstore.keys import authenticate, create_key, install_key
    from jobstore.settings import get_settings

    s = get_settings()
    with session_scope() as session:
        if s.api_key:
            install_key(session, DEFAULT_PROJECT, s.api_key)
            return s.api_key, "SANITIZER_API_KEY"
        saved = s.data_dir / "api_key"
        if saved.is_file():
            key = saved.read_text().strip()
            if authenticate(session, key) is not None:
                return key, str(saved)
        _, key = create_key(session, DEFAULT_PROJECT, name="serve")
    saved.write_text(key + "\n")
    saved.chmod(0o600)
    return key, str(saved)


def _key_line(key: str, source: str, to_terminal: bool) -> str:
    """The banner's key line. The key itself is shown only to a person at a terminal: output
    redirected to a file or a log collector never carries it."""
    if source == "SANITIZER_API_KEY":
        return "API key: the one in SANITIZER_API_KEY"
    if to_terminal:
        return f"API key: {key}  (also in {source})"
    return f"API key: in {source} (not printed: output is not a terminal)"


def serve(
    host: str = typer.Option("127.0.0.1", help="address the API listens on"),
    port: int = typer.Option(8000, help="API port"),
    workers: int = typer.Option(1, help="worker processes started beside the API (0: none)"),
    api_workers: int = typer.Option(
        1,
        min=1,
        help="API processes (uvicorn workers); 2 on a 2-core host doubles status-poll "
        "throughput (docs/SERVICE_BENCHMARKS.md)",
    ),
    data_dir: Path | None = typer.Option(None, help="overrides SANITIZER_DATA_DIR"),
) -> None:
    """Start the API and a worker on this machine (SQLite + a serverless broker unless
    DATABASE_URL / REDIS_URL are set)."""
    _apply_env(data_dir)
    import uvicorn

    from jobstore.db import upgrade
    from jobstore.settings import get_settings

    s = get_settings()
    upgrade()
    key, key_source = _embedded_key()
    mode = (
        "embedded (SQLite broker, no Redis)"
        if s.embedded
        else f"distributed ({s.broker_url.split('@')[-1]})"
    )
    typer.echo(f"sanitizer service: {mode}; data in {s.data_dir}")
    typer.echo(f"API:     http://{host}:{port}  (OpenAPI at /docs)")
    typer.echo(_key_line(key, key_source, sys.stdout.isatty()))
    from jobstore.supervisor import STATUS_ENV, WorkerSupervisor

    supervisor = None
    if workers > 0:
        status_file = s.data_dir / "workers.json"
        os.environ[STATUS_ENV] = str(status_file)  # the API (this process) reads it on /readyz
        get_settings.cache_clear()
        supervisor = WorkerSupervisor(
            lambda name: [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "workers.celery_app:celery_app",
                *worker_argv(None, 1, name),
            ],
            [f"embedded{i}" for i in range(workers)],
            status_file,
            env={**os.environ, "SANITIZER_DATA_DIR": str(s.data_dir)},
        ).start()
    # uvicorn shuts down gracefully on SIGTERM, restores the handler it found and then raises
    # the signal again: with the default handler the process would die there and skip the
    # `finally` below, leaving the workers running (they only get SIGTERM through the
    # parent-death signal, and one busy with a job keeps running it). Found here, that handler
    # turns the re-raised SIGTERM into SystemExit, so the workers are stopped first.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        uvicorn.run("app.main:app", host=host, port=port, log_level="info", workers=api_workers)
    finally:
        if supervisor is not None:
            # SIGTERM to each worker's group: Celery stops taking jobs and hands a running
            # one back (the reaper re-queues it); after 20 s the rest of the group is killed
            supervisor.stop(timeout=20)


def worker(
    concurrency: int = typer.Option(1, help="jobs run at once by this worker (one per GPU)"),
    queues: str | None = typer.Option(
        None, help="comma-separated queues; default sanitize,webhooks"
    ),
    data_dir: Path | None = typer.Option(None, help="overrides SANITIZER_DATA_DIR"),
) -> None:
    """Run a Celery worker that executes sanitization jobs (and webhook deliveries)."""
    _apply_env(data_dir)
    from workers.celery_app import celery_app

    celery_app.worker_main(worker_argv(queues, concurrency))


@keys_app.command("create")
def keys_create(
    project: str = typer.Option(
        DEFAULT_PROJECT, help="project the key belongs to (created if new)"
    ),
    name: str | None = typer.Option(None, help="a label for the key"),
    json_out: bool = typer.Option(
        False, "--json", help='print {"id", "project", "name", "key"} as JSON (for scripts)'
    ),
) -> None:
    """Create an API key; it is printed once and stored only hashed."""
    from jobstore.db import session_scope, upgrade
    from jobstore.keys import create_key

    upgrade()
    with session_scope() as s:
        record, key = create_key(s, project, name)
        key_id = record.id
    if json_out:
        typer.echo(json.dumps({"id": key_id, "project": project, "name": name, "key": key}))
        return
    typer.echo(
        f"key id:  {key_id}\nproject: {project}\nAPI key: {key}\n(store it now: it is not shown again)"
    )


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="the key id (keyXXXXXXXXXXXX)")) -> None:
    """Revoke a key: requests with it get 401 from now on."""
    from jobstore.db import session_scope
    from jobstore.keys import revoke_key

    with session_scope() as s:
        record = revoke_key(s, key_id)
    if record is None:
        typer.echo(f"no key {key_id}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")


@keys_app.command("list")
def keys_list(
    json_out: bool = typer.Option(False, "--json", help="print a JSON list (for scripts)"),
) -> None:
    """List keys (ids, projects, state; never the keys themselves)."""
    from jobstore.db import session_scope
    from jobstore.keys import list_keys

    with session_scope() as s:
        rows = [
            {
                "id": k.id,
                "project": p.name,
                "name": k.name,
                "created_at": k.created_at.isoformat() if k.created_at else None,
                "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
            }
            for k, p in list_keys(s)
        ]
    if json_out:
        typer.echo(json.dumps(rows))
        return
    for r in rows:
        state = f"revoked {r['revoked_at'][:10]}" if r["revoked_at"] else "active"
        typer.echo(f"{r['id']}\t{r['project']}\t{state}\t{r['name'] or ''}")


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply the migrations to DATABASE_URL (SQLite by default)."""
    from jobstore.db import upgrade
    from jobstore.settings import get_settings

    upgrade(revision=revision)
    typer.echo(f"database at {get_settings().db_url.split('@')[-1]} is at {revision}")


@models_app.command("push")
def models_push(
    model_id: str = typer.Argument(..., help="an installed model id, e.g. org/name"),
    revision: str | None = typer.Option(None, help="the revision jobs will name (default main)"),
    source: Path | None = typer.Option(
        None, help="the model folder (default: the id's folder in SANITIZER_MODEL_STORE)"
    ),
) -> None:
    """Publish a base model to the artifact store (SANITIZER_ARTIFACTS_URL), so worker hosts
    that lack it copy it into their model cache when a job names it."""
    from jobstore.artifacts import get_store
    from jobstore.model_cache import push_model, store_prefix
    from sanitizer.errors import SanitizerError
    from sanitizer.hub import resolve_model

    try:
        folder = source or resolve_model(model_id, revision, local_paths=False)
        n = push_model(get_store(), folder, model_id, revision)
    except (SanitizerError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"pushed {n} files of {model_id} to {store_prefix(model_id, revision)}/")


@models_app.command("list")
def models_list() -> None:
    """Models installed on this host and models published to the artifact store."""
    from jobstore.artifacts import get_store
    from jobstore.model_cache import published_models
    from sanitizer.hub import list_models

    for m in list_models():
        typer.echo(f"{m}\tinstalled")
    for model_id, revision in published_models(get_store()):
        typer.echo(f"{model_id}\tpublished\t{revision}")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("worker")(worker)
    app.add_typer(keys_app, name="keys")
    app.add_typer(db_app, name="db")
    app.add_typer(models_app, name="models")
