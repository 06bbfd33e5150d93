"""One job, start to finish, as the ``sanitizer.sanitize`` task runs it.

Claim the job (``queued -> running``, only for the attempt the message names), fetch its
inputs into a clean work folder, call ``sanitizer.pipeline.run_sanitize`` with a progress
callback (throttled writes of progress and events) and a cancellation check (the job's
status), store the adapter archive and the report under the job id, and finish the job.
A heartbeat thread proves the worker is alive; the API's reaper re-runs or fails jobs whose
heartbeat stops.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

from sqlalchemy import update

from jobstore import status as st
from jobstore.artifacts import get_store
from jobstore.db import session_scope
from jobstore.jobs import add_event, finish
from jobstore.models import File, Job, utcnow
from jobstore.settings import get_settings
from workers.overall import OverallProgress, plan_for

log = logging.getLogger(__name__)


class Heartbeat(threading.Thread):
    def __init__(self, job_id: str, attempt: int, interval: float) -> None:
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.job_id, self.attempt, self.interval = job_id, attempt, interval
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                with session_scope() as s:
                    s.execute(
                        update(Job)
                        .where(
                            Job.id == self.job_id,
                            Job.attempt == self.attempt,
                            Job.status.in_([st.RUNNING, st.CANCELLING]),
                        )
                        .values(heartbeat_at=utcnow())
                    )
            except Exception:
                log.exception("heartbeat of %s failed", self.job_id)


class Reporter:
    """The pipeline's ``progress`` and ``should_cancel`` callbacks, throttled."""

    def __init__(
        self, job_id: str, min_interval: float, spec: dict[str, Any] | None = None
    ) -> None:
        self.job_id, self.min_interval = job_id, min_interval
        self.overall = OverallProgress(plan_for(spec or {}), time.monotonic())
        self._last_write = 0.0
        self._last_phase: str | None = None
        self._last_check = 0.0
        self._cancel = False

    def progress(self, event: Any) -> None:
        d = event.to_dict() if hasattr(event, "to_dict") else dict(event)
        now = time.monotonic()
        overall, overall_eta = self.overall.update(d, now)  # every event: the rates stay true
        new_phase = d.get("phase") != self._last_phase
        last_step = d.get("total_steps") and d.get("step") == d.get("total_steps")
        if not (new_phase or last_step or now - self._last_write >= self.min_interval):
            return
        self._last_write, self._last_phase = now, d.get("phase")
        losses = {k: float(v) for k, v in (d.get("losses") or {}).items()}
        progress: dict[str, Any] = {
            "phase": d.get("phase"),
            "step": int(d.get("step") or 0),
            "total_steps": int(d.get("total_steps") or 0),
            "epoch": int(d.get("epoch") or 0),
            "eta_seconds": d.get("eta_seconds"),
            "losses": losses,
            "message": d.get("message") or None,
            "overall": overall,
            "overall_eta_seconds": overall_eta,
        }
        message = d.get("message") or (
            f"{d.get('phase')}: step {progress['step']}/{progress['total_steps']}"
        )
        with session_scope() as s:
            s.execute(
                update(Job)
                .where(Job.id == self.job_id, Job.status.in_([st.RUNNING, st.CANCELLING]))
                .values(progress=progress, heartbeat_at=utcnow())
            )
            add_event(
                s,
                self.job_id,
                message,
                phase=progress["phase"],
                metrics={
                    **losses,
                    "step": progress["step"],
                    "total_steps": progress["total_steps"],
                },
            )

    def should_cancel(self) -> bool:
        now = time.monotonic()
        if not self._cancel and now - self._last_check >= min(1.0, self.min_interval):
            self._last_check = now
            with session_scope() as s:
                status = s.get(Job, self.job_id).status  # type: ignore[union-attr]
            self._cancel = status in (st.CANCELLING, st.CANCELLED)
        return self._cancel


def package_adapter(adapter_dir: Path, out: Path) -> None:
    """Zip the adapter files with a manifest.json listing each file's sha256."""
    from sanitizer.data import sha256_file

    files = sorted(p for p in adapter_dir.rglob("*") if p.is_file())
    manifest = {
        "files": {p.relative_to(adapter_dir).as_posix(): sha256_file(p) for p in files},
        "created_at": utcnow().isoformat(),
    }
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in files:
            zf.write(p, p.relative_to(adapter_dir).as_posix())
        zf.writestr("manifest.json", json.dumps(manifest, indent=2, sort_keys=True))


def _finish(job_id: str, olds: list[str], new: str, message: str, **kw: Any) -> None:
    with session_scope() as s:
        finish(s, job_id, olds, new, message, _send_webhook, **kw)


def _send_webhook(delivery_id: str) -> None:
    """Published by task name, as the API does (app/queue.py): no import of workers.tasks."""
    from workers.celery_app import celery_app

    celery_app.send_task(
        "sanitizer.deliver_webhook", args=[delivery_id], queue=get_settings().webhooks_queue
    )


def _inputs(job: Job, files: dict[str, File], work: Path) -> dict[str, Any]:
    """Fetch the job's files into ``work/inputs`` and return the JobSpec fields they give."""
    from sanitizer.archives import extract_archive

    settings = get_settings()
    store = get_store()
    inputs = work / "inputs"
    out: dict[str, Any] = {}

    def fetch(file_id: str, folder: str) -> Path:
        f = files[file_id]
        return store.fetch(f.storage_key, inputs / folder / Path(f.storage_key).name)

    out["clean_data"] = fetch(job.clean_dataset_file_id, "clean")
    if job.test_dataset_file_id:
        out["test_data"] = fetch(job.test_dataset_file_id, "test")
    if job.unlabeled_dataset_file_id:
        out["unlabeled_data"] = fetch(job.unlabeled_dataset_file_id, "unlabeled")
    if job.adapter_file_id:
        archive = fetch(job.adapter_file_id, "archive")
        out["adapter_dir"] = extract_archive(
            archive,
            inputs / "adapter",
            max_bytes=settings.max_extracted_bytes,
            max_files=settings.max_archive_files,
        )
    return out


def run_job(job_id: str, attempt: int, worker: str = "worker") -> str:
    settings = get_settings()
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is None:
            log.warning("job %s does not exist; dropping the task", job_id)
            return "missing"
        if job.status != st.QUEUED or job.attempt != attempt:
            # a duplicate or stale delivery (e.g. redelivered after the reaper moved on)
            log.info(
                "job %s is %s (attempt %s); task for attempt %s ignored",
                job_id,
                job.status,
                job.attempt,
                attempt,
            )
            return "stale"
        if not st.compare_and_set(
            s,
            job_id,
            st.QUEUED,
            st.RUNNING,
            where=[Job.attempt == attempt],
            worker=f"{worker}:{os.getpid()}",
        ):
            return "stale"
        add_event(
            s,
            job_id,
            f"started on {worker} (pid {os.getpid()}, attempt {attempt})",
            phase="running",
        )
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        s.expunge(job)
        files = {f.id: f for f in (s.get(File, i) for i in job.input_file_ids()) if f}
        for f in files.values():
            s.expunge(f)

    heartbeat = Heartbeat(job_id, attempt, settings.heartbeat_interval)
    heartbeat.start()
    work = settings.work_path / job_id
    store = get_store()
    try:
        shutil.rmtree(work, ignore_errors=True)  # a re-run starts from a clean state
        store.delete_prefix(f"jobs/{job_id}")
        work.mkdir(parents=True)
        return _run(job, files, work, attempt)
    finally:
        heartbeat.stop.set()
        shutil.rmtree(work, ignore_errors=True)


def _run(job: Job, files: dict[str, File], work: Path, attempt: int) -> str:
    from celery.exceptions import SoftTimeLimitExceeded

    from sanitizer.errors import Cancelled, InputError

    settings = get_settings()
    running = [st.RUNNING, st.CANCELLING]
    reporter = Reporter(job.id, settings.progress_interval, job.spec)
    try:
        # the API took model ids only; the worker holds to that as well, so a job row that
        # names a folder (written some other way, or an id that became a folder on this host
        # since) never has the worker load a model from an arbitrary path on its disk
        # (and a model published to the artifact store is copied into this host's cache)
        from jobstore.model_cache import resolve, use_cache

        use_cache(settings.model_cache_path)  # the library loads the models by id below
        resolve(job.base_model, job.base_revision)
        hp = (job.spec or {}).get("hyperparameters") or {}
        for name in ("teacher_model", "trusted_base"):  # other models a method loads by id
            if hp.get(name):
                resolve(str(hp[name]))
        missing = [i for i in job.input_file_ids() if i not in files]
        if missing:
            raise InputError(
                f"input file(s) {', '.join(missing)} were deleted", code="file_not_found"
            )
        scan = (job.spec or {}).get("type") == "scan"
        sha = (_scan if scan else _sanitize)(job, files, work, attempt, reporter)
    except Cancelled:
        # only a cancel request (cancelling) makes the defense stop; running -> cancelled is
        # not a legal transition, and asking for it raised and left the job to the reaper
        _finish(job.id, [st.CANCELLING], st.CANCELLED, "cancelled by request")
        return "cancelled"
    except InputError as exc:
        msg = exc.message + (f" ({exc.hint})" if exc.hint else "")
        _finish(
            job.id, running, st.FAILED, f"failed: {msg}", error_code=exc.code, error_message=msg
        )
        return "failed"
    except SoftTimeLimitExceeded:
        msg = f"the job exceeded the {settings.job_time_limit}s time limit"
        _finish(job.id, running, st.FAILED, msg, error_code="time_limit", error_message=msg)
        return "failed"
    except Exception as exc:
        log.exception("job %s failed", job.id)
        msg = f"{type(exc).__name__}: {exc}"[:2000]
        _finish(
            job.id,
            running,
            st.FAILED,
            f"failed: {msg}",
            error_code="internal_error",
            error_message=msg,
        )
        return "failed"
    _finish(
        job.id,
        running,
        st.SUCCEEDED,
        "succeeded; scan report stored" if sha is None else "succeeded; adapter and report stored",
        artifact_sha256=sha,
    )
    return "succeeded"


def _sanitize(
    job: Job, files: dict[str, File], work: Path, attempt: int, reporter: Reporter
) -> str | None:
    """Run the sanitization; store the report and the adapter; the adapter's sha256."""
    from sanitizer.jobspec import JobSpec  # torch: inside the task only
    from sanitizer.pipeline import run_sanitize

    store = get_store()
    spec = JobSpec.from_request(job.spec or {}, method=job.method, **_inputs(job, files, work))
    out = work / "out"
    report = run_sanitize(
        spec, out, progress=reporter.progress, should_cancel=reporter.should_cancel
    )
    report["job"] = {"id": job.id, "attempt": attempt}
    zip_path = work / "adapter.zip"
    package_adapter(out / "adapter", zip_path)
    store.put_bytes(
        f"jobs/{job.id}/report.json", json.dumps(report, indent=2, default=str).encode()
    )
    return store.put_file(f"jobs/{job.id}/adapter.zip", zip_path)


def _scan(
    job: Job, files: dict[str, File], work: Path, attempt: int, reporter: Reporter
) -> str | None:
    """Run a scan on the model as uploaded and the clean rows; store its report. No adapter."""
    from sanitizer.defenses.common import ProgressEvent
    from sanitizer.defenses.configs import ScanConfig
    from sanitizer.scan import run_scan  # torch: inside the task only

    spec_in = job.spec or {}
    inputs = _inputs(job, files, work)
    cfg = ScanConfig(**{"seed": spec_in.get("seed", 0), **(spec_in.get("hyperparameters") or {})})
    reporter.progress(ProgressEvent("scan", message="searching for a trigger"))
    result = run_scan(
        job.base_model,
        inputs["clean_data"],
        adapter_dir=inputs.get("adapter_dir"),
        task=job.task,  # type: ignore[arg-type]  # checked by the API: classification|generation
        text_column=spec_in.get("text_column", "text"),
        label_column=spec_in.get("label_column", "label"),
        cfg=cfg,
    )
    result["adapter"] = job.adapter_file_id  # the file id, not the worker's scratch path
    report = {
        "schema_version": 1,
        "type": "scan",
        "task": job.task,
        "base_model": {"id": job.base_model, "revision": job.base_revision},
        "scan": result,
        "job": {"id": job.id, "attempt": attempt},
    }
    get_store().put_bytes(
        f"jobs/{job.id}/report.json", json.dumps(report, indent=2, default=str).encode()
    )
    return None
