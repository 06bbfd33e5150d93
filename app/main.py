"""The FastAPI application: routers, problem+json errors, request ids, the reaper thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from prometheus_client import REGISTRY

from app import problems
from app.middleware import BodyLimit, RequestContext, RequestIdFilter
from app.queue import get_queue
from app.routers import catalog, files, health, jobs, project, ui
from jobstore.artifacts import get_store
from jobstore.db import session_factory, session_scope, upgrade
from jobstore.files import expire_files
from jobstore.jobs import reap
from jobstore.keys import install_key
from jobstore.settings import get_settings

log = logging.getLogger("app")
DEFAULT_PROJECT = "default"


def reaper_loop(stop: threading.Event) -> None:
    settings = get_settings()
    while not stop.is_set():
        try:
            reap(
                session_factory(),
                get_queue().enqueue,
                heartbeat_timeout=settings.heartbeat_timeout,
                max_attempts=settings.max_attempts,
                dispatch_grace=max(2.0, settings.reaper_interval),
                redispatch_after=settings.redispatch_after,
                time_limit=settings.job_time_limit,
                broker_started_at=get_queue().broker_started_at(),
                send_webhook=get_queue().send_webhook,
            )
            if settings.file_retention_days > 0:
                expire_files(session_factory(), get_store(), settings.file_retention_days)
        except Exception:
            log.exception("reaper pass failed")
        stop.wait(settings.reaper_interval)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    if settings.auto_migrate:
        upgrade()
    if settings.api_key:
        with session_scope() as s:
            install_key(s, DEFAULT_PROJECT, settings.api_key)
    stop = threading.Event()
    thread = threading.Thread(target=reaper_loop, args=(stop,), name="reaper", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


_collector: health.StoreCollector | None = None


def create_app() -> FastAPI:
    global _collector
    logging.getLogger().addFilter(RequestIdFilter())
    app = FastAPIOffline(  # /docs and /redoc with their assets served from the package
        title="Backdoor sanitizer",
        version="1.0",
        description="Upload a PEFT adapter and a clean dataset, run W2SDefense / CROW / "
        "fine-tuning to remove backdoors, download the sanitized adapter and its report.",
        lifespan=lifespan,
    )
    problems.install(app)
    problems.document(app)
    app.add_middleware(BodyLimit)
    app.add_middleware(RequestContext)  # outermost: the 413 carries the request id too
    for r in (files.router, jobs.router, catalog.router, project.router, health.router, ui.router):
        app.include_router(r)
    if _collector is None:  # one per process (tests build several apps)
        _collector = health.StoreCollector(get_queue)
        REGISTRY.register(_collector)
    return app


app = create_app()
