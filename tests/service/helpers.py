"""Builders of test inputs (datasets, adapters, hostile archives) and a process stack
(uvicorn API + Celery worker subprocesses) for the service tests."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_adapter_zip(store: Path, model_id: str, out: Path) -> Path:
    """A real PEFT LoRA adapter for the tiny model ``model_id``, zipped."""
    os.environ["SANITIZER_MODEL_STORE"] = str(store)
    from sanitizer.models import add_lora, load_model, save_adapter

    lm = load_model(model_id, "classification", num_labels=2, device="cpu")
    add_lora(lm, r=4, alpha=4, dropout=0.0, target="attention")
    folder = out.with_suffix("")
    save_adapter(lm, folder)
    with zipfile.ZipFile(out, "w") as zf:
        for p in sorted(folder.iterdir()):
            zf.write(p, p.name)
    return out


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def adapter_config(base: str = "tiny/bert") -> bytes:
    return json.dumps(
        {
            "peft_type": "LORA",
            "base_model_name_or_path": base,
            "r": 4,
            "lora_alpha": 4,
            "target_modules": ["query", "value"],
            "task_type": "SEQ_CLS",
        }
    ).encode()


def wait_for(fn: Any, timeout: float, interval: float = 0.5, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def process_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its new parent has not reaped yet."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


class Stack:
    """The real service as separate processes: a uvicorn API and Celery workers."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self.key = env["SANITIZER_API_KEY"]

    def _spawn(self, args: list[str], name: str) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115
        return subprocess.Popen(
            args,
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_api(self, workers: int = 1) -> None:
        self.api = self._spawn(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:app",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
                "--log-level",
                "warning",
            ],
            "api",
        )
        wait_for(self._healthy, 60, 0.3, "the API to start")

    def _healthy(self) -> bool:
        try:
            return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start_worker(self) -> subprocess.Popen[bytes]:
        n = len(self.workers)
        p = self._spawn([sys.executable, "-m", "sanitizer_cli", "worker"], f"worker{n}")
        self.workers.append(p)
        return p

    def kill(self, p: subprocess.Popen[bytes] | None, sig: int = signal.SIGKILL) -> None:
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, sig)  # the whole process group: a lost machine/container
        except ProcessLookupError:
            return
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)

    def stop(self) -> None:
        for p in self.workers:
            self.kill(p, signal.SIGTERM)
        self.kill(self.api, signal.SIGTERM)

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30
        )

    def log_tail(self) -> str:
        out = []
        for f in sorted(self.logs.glob("*.log")):
            out.append(f"--- {f.name}\n" + f.read_text(errors="replace")[-3000:])
        return "\n".join(out)


def upload(c: httpx.Client, path: Path, purpose: str, **fields: str) -> dict[str, Any]:
    with path.open("rb") as fh:
        r = c.post(
            "/v1/files", data={"purpose": purpose, **fields}, files={"file": (path.name, fh)}
        )
    assert r.status_code == 201, r.text
    return r.json()


def wait_job(
    c: httpx.Client, job_id: str, timeout: float = 120, until: Any = None
) -> dict[str, Any]:
    done = until or (lambda j: j["status"] in ("succeeded", "failed", "cancelled"))

    def poll() -> dict[str, Any] | None:
        j = c.get(f"/v1/jobs/{job_id}").json()
        return j if done(j) else None

    return wait_for(poll, timeout, 0.5, f"job {job_id}")


def finish_with_sample_report(jid: str) -> dict:
    """Mark job ``jid`` succeeded with the recorded sample report (tests/client/data) as its
    report.json, as a worker would have left it; returns the report."""
    from jobstore import status as st
    from jobstore.artifacts import get_store
    from jobstore.db import session_scope
    from jobstore.models import Job

    report = json.loads((REPO / "tests/client/data/report_classification.json").read_text())
    get_store().put_bytes(f"jobs/{jid}/report.json", json.dumps(report).encode())
    with session_scope() as s:
        job = s.get(Job, jid)
        st.transition(job, st.RUNNING)
        st.transition(job, st.SUCCEEDED)
        job.artifact_sha256 = "0" * 64
    return report
