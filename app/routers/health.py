"""Liveness, readiness and Prometheus metrics (no API key needed)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy import func, select, text

from app.deps import QueueDep, SessionDep
from app.problems import problem_response
from jobstore import status as st
from jobstore.db import session_factory
from jobstore.models import Job
from jobstore.settings import get_settings
from jobstore.supervisor import read_status

router = APIRouter(tags=["health"])

DURATION_BUCKETS = (10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600)


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request, s: SessionDep, queue: QueueDep) -> Any:
    """Readiness: the database and the broker are reachable (503 problem otherwise)."""
    checks: dict[str, str] = {}
    try:
        s.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        queue.depth()
        checks["broker"] = "ok"
    except Exception as exc:
        checks["broker"] = f"error: {type(exc).__name__}"
    workers = read_status(get_settings().worker_status_file)
    if workers is not None:  # `sanitizer serve` runs the workers beside the API
        missing = workers["expected"] - workers["alive"]
        checks["workers"] = (
            "ok"
            if missing <= 0
            else f"error: {missing} of {workers['expected']} down"
            + (" (gave up restarting)" if workers.get("gave_up") else " (restarting)")
        )
    if all(v == "ok" for v in checks.values()):
        return {"status": "ready", "checks": checks}
    failing = ", ".join(k for k, v in checks.items() if v != "ok")
    return problem_response(
        request,
        503,
        "not_ready",
        f"not ready: {failing} " + ("down" if failing == "workers" else "unreachable"),
        hint="check DATABASE_URL / REDIS_URL and that those services run"
        + ("; the worker log says why it stopped" if "workers" in failing else ""),
        checks=checks,
        headers={"Retry-After": "5"},
    )


class StoreCollector:
    """Read at scrape time from the job store and the broker, so every API replica and
    worker agrees: jobs by status, run durations of finished jobs, queue depth."""

    def __init__(self, queue_getter: Any) -> None:
        self.queue_getter = queue_getter

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        jobs = GaugeMetricFamily("sanitizer_jobs", "jobs by status", labels=["status"])
        hist = HistogramMetricFamily(
            "sanitizer_job_duration_seconds",
            "run time (started -> finished) of finished jobs",
            labels=["status"],
        )
        try:
            with session_factory()() as s:
                counts = dict(
                    s.execute(select(Job.status, func.count()).group_by(Job.status)).all()
                )
                for status in st.STATUSES:
                    jobs.add_metric([status], counts.get(status, 0))
                rows = s.execute(
                    select(Job.status, Job.started_at, Job.finished_at).where(
                        Job.status.in_(st.TERMINAL), Job.started_at.is_not(None)
                    )
                ).all()
            per: dict[str, list[float]] = {}
            for status, started, finished in rows:
                if finished is not None and started is not None:
                    per.setdefault(status, []).append((finished - started).total_seconds())
            for status, values in per.items():
                buckets = [(str(b), sum(v <= b for v in values)) for b in DURATION_BUCKETS]
                buckets.append(("+Inf", len(values)))
                hist.add_metric([status], buckets, sum(values))
        except Exception:
            pass
        yield jobs
        yield hist
        depth = GaugeMetricFamily(
            "sanitizer_queue_depth", "tasks waiting in the broker", labels=["queue"]
        )
        try:
            for q, n in self.queue_getter().depth().items():
                depth.add_metric([q], n)
        except Exception:
            pass
        yield depth


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text"}},
)
def metrics() -> Response:
    """Prometheus metrics."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
