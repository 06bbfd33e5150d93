"""End to end on the real stack: a uvicorn API process, Celery worker processes, Redis,
SQLite or PostgreSQL, tiny models built in code. Plus the faults: a worker killed mid-job,
the API restarted, Redis going away for a while, and the embedded (no Redis) mode."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.service.conftest import require_or_skip
from tests.service.helpers import (
    REPO,
    Stack,
    free_port,
    process_gone,
    upload,
    wait_for,
    wait_job,
)

pytestmark = pytest.mark.integration


class Receiver:
    """A local webhook endpoint that verifies Standard Webhooks signatures; answers 500
    to the first ``fail_first`` requests to exercise the retries."""

    def __init__(self, fail_first: int = 1) -> None:
        self.secret: str | None = None
        self.received: list[dict[str, Any]] = []
        self.attempts = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                from standardwebhooks import Webhook

                body = self.rfile.read(int(self.headers["content-length"]))
                outer.attempts += 1
                if outer.attempts <= fail_first:
                    self.send_response(500)
                    self.end_headers()
                    return
                payload = Webhook(outer.secret).verify(body, dict(self.headers))  # raises if forged
                outer.received.append({"payload": payload, "id": self.headers["webhook-id"]})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def stack(service_env, tmp_path, request):
    s = Stack(dict(service_env), tmp_path / "logs")
    yield s
    s.stop()
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        print(s.log_tail())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # pragma: no cover - log helper
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


def inputs(c: httpx.Client, assets: dict[str, Path]) -> dict[str, str]:
    return {
        "adapter": upload(c, assets["adapter"], "adapter")["id"],
        "clean": upload(c, assets["clean"], "dataset")["id"],
        "test": upload(c, assets["test"], "dataset")["id"],
    }


def submit(c: httpx.Client, ids: dict[str, str], **kw: Any) -> dict[str, Any]:
    body = {
        "method": "finetune",
        "base_model": "tiny/bert",
        "adapter_file": ids["adapter"],
        "clean_dataset_file": ids["clean"],
        "evaluation": {
            "test_dataset_file": ids["test"],
            "attack": {"name": "badnet", "trigger": "cf", "target_label": 0},
        },
        "hyperparameters": {"epochs": 1, "max_steps": 3, "batch_size": 8},
        **kw,
    }
    r = c.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    return r.json()


def check_outputs(c: httpx.Client, stack: Stack, job: dict[str, Any], tmp: Path) -> dict[str, Any]:
    jid = job["id"]
    r = c.get(f"/v1/jobs/{jid}/artifacts/adapter")
    assert r.status_code == 200
    assert (
        r.headers["x-content-sha256"]
        == hashlib.sha256(r.content).hexdigest()
        == job["artifacts"]["adapter"]["sha256"]
    )
    archive = tmp / "out.zip"
    archive.write_bytes(r.content)
    with zipfile.ZipFile(archive) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        names = set(zf.namelist()) - {"manifest.json"}
        assert names == set(manifest["files"])
        for n in names:
            assert hashlib.sha256(zf.read(n)).hexdigest() == manifest["files"][n]
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    # the SDK verifies the same way
    from sanitizer_client import Client

    with Client(stack.url, api_key=stack.key) as sdk:
        dl = sdk.jobs.download_adapter(jid, tmp / "sdk_adapter")
        assert dl.verified and "adapter_model.safetensors" in dl.files
    report = c.get(f"/v1/jobs/{jid}/report").json()
    for when in ("before", "after"):
        assert 0 <= report["metrics"][when]["clean_accuracy"] <= 1
        assert 0 <= report["metrics"][when]["attack_success_rate"] <= 1
    assert report["job"]["id"] == jid and report["versions"]["torch"]
    assert report["datasets"]["clean"]["sha256"] and report["base_model"]["sha256"]
    html = c.get(f"/v1/jobs/{jid}/report.html")
    assert html.status_code == 200 and "<html" in html.text.lower()
    events = c.get(f"/v1/jobs/{jid}/events", params={"limit": 500}).json()["data"]
    phases = {e["phase"] for e in events}
    assert {"queued", "running", "load", "defense", "succeeded"} <= phases
    assert any("loss" in e["metrics"] for e in events if e["phase"] == "defense")
    return report


def run_happy_path(stack: Stack, assets: dict[str, Path], tmp: Path, **job_kw: Any) -> None:
    stack.start_api()
    stack.start_worker()
    receiver = Receiver(fail_first=1)
    with stack.client() as c:
        receiver.secret = c.get("/v1/project").json()["webhook_secret"]
        assert c.get("/readyz").status_code == 200
        ids = inputs(c, assets)
        job = submit(c, ids, webhook_url=receiver.url, metadata={"run": "e2e"}, **job_kw)
        seen: list[dict[str, Any]] = []

        def running_with_progress(j: dict[str, Any]) -> bool:
            seen.append(j)
            return j["status"] in ("succeeded", "failed", "cancelled")

        job = wait_job(c, job["id"], 180, until=running_with_progress)
        assert job["status"] == "succeeded", (job["error"], stack.log_tail())
        assert any(j["status"] == "running" and j["progress"] for j in seen)
        assert job["started_at"] and job["finished_at"] and job["attempt"] == 1
        check_outputs(c, stack, job, tmp)
        wait_for(lambda: receiver.received, 60, 0.5, "the webhook")
        hook = receiver.received[0]["payload"]
        assert hook["type"] == "job.succeeded" and hook["data"]["id"] == job["id"]
        assert hook["data"]["metadata"] == {"run": "e2e"} and receiver.attempts == 2  # one retry
        m = httpx.get(stack.url + "/metrics").text
        assert 'sanitizer_jobs{status="succeeded"} 1.0' in m
        assert 'sanitizer_job_duration_seconds_count{status="succeeded"} 1.0' in m


def test_e2e_redis_sqlite(stack, assets, redis_url, tmp_path):
    stack.env["REDIS_URL"] = redis_url
    run_happy_path(stack, assets, tmp_path)


def test_e2e_breakdown_and_baseline(stack, assets, redis_url, tmp_path):
    """evaluation.extra_attacks and evaluation.baseline reach the worker; the report and its
    HTML page carry the per-attack breakdown and the fine-tuning baseline."""
    stack.env["REDIS_URL"] = redis_url
    stack.start_api()
    stack.start_worker()
    with stack.client() as c:
        ids = inputs(c, assets)
        attack = {"name": "badnet", "trigger": "cf", "target_label": 0}
        evaluation = {
            "test_dataset_file": ids["test"],
            "attack": attack,
            "extra_attacks": [{**attack, "trigger": "mn"}],
            "baseline": True,
            "comparators": ["int4"],
        }
        job = submit(c, ids, method="crow", evaluation=evaluation)
        job = wait_job(c, job["id"], 240)
        assert job["status"] == "succeeded", (job["error"], stack.log_tail())
        report = c.get(f"/v1/jobs/{job['id']}/report").json()
        assert set(report["metrics"]["per_attack"]) == {"badnet 'cf'", "badnet 'mn'"}
        assert report["baseline"]["method"] == "finetune"
        assert 0 <= report["baseline"]["metrics"]["after"]["attack_success_rate"] <= 1
        events = c.get(f"/v1/jobs/{job['id']}/events", params={"limit": 500}).json()["data"]
        assert any((e["phase"] or "").startswith("baseline") for e in events)
        assert list(report["comparators"]) == ["int4"]
        assert 0 <= report["comparators"]["int4"]["metrics"]["after"]["clean_accuracy"] <= 1
        assert any(e["phase"] == "comparators" for e in events)
        html = c.get(f"/v1/jobs/{job['id']}/report.html").text
        assert job["id"] in html and "fine-tune baseline" in html
        assert "Zero-training comparators" in html


def test_e2e_redis_postgres_w2sdefense(stack, assets, redis_url, pg_url, tmp_path):
    stack.env.update(REDIS_URL=redis_url, DATABASE_URL=pg_url)
    run_happy_path(
        stack,
        assets,
        tmp_path,
        method="w2sdefense",
        hyperparameters={
            "epochs": 1,
            "max_steps": 2,
            "batch_size": 8,
            "teacher_model": "tiny/teacher",
            "teacher_epochs": 1,
            "teacher_batch_size": 8,
        },
    )


def test_embedded_serve_cancel_and_success(service_env, assets, tmp_path):
    """`sanitizer serve` with no Redis: SQLite database and SQLite broker, same task code."""
    port = free_port()
    env = {**os.environ, **service_env}
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "sanitizer_cli", "serve", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            try:
                return httpx.get(url + "/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, 0.5, "sanitizer serve")
        out = (tmp_path / "serve.log").read_text()
        assert "embedded" in out and "API key: the one in SANITIZER_API_KEY" in out
        assert service_env["SANITIZER_API_KEY"] not in out  # no secret in the log
        with httpx.Client(
            base_url=url,
            headers={"Authorization": f"Bearer {service_env['SANITIZER_API_KEY']}"},
            timeout=30,
        ) as c:
            ids = inputs(c, assets)
            receiver = Receiver(fail_first=0)
            receiver.secret = c.get("/v1/project").json()["webhook_secret"]
            long = submit(
                c,
                ids,
                hyperparameters={"epochs": 50, "batch_size": 4},
                webhook_url=receiver.url,
            )
            wait_job(
                c, long["id"], 90, until=lambda j: (j["progress"] or {}).get("phase") == "defense"
            )
            r = c.post(f"/v1/jobs/{long['id']}/cancel")
            assert r.json()["status"] in ("cancelling", "cancelled")
            long = wait_job(c, long["id"], 60)
            assert long["status"] == "cancelled", long
            # the worker honoured the request itself (not the reaper after its heartbeat stopped)
            msgs = [e["message"] for e in c.get(f"/v1/jobs/{long['id']}/events").json()["data"]]
            assert msgs[-1] == "cancelled by request", msgs
            wait_for(lambda: receiver.received, 60, 0.5, "the job.cancelled webhook")
            hook = receiver.received[0]["payload"]
            assert hook["type"] == "job.cancelled" and hook["data"]["id"] == long["id"]
            job = wait_job(c, submit(c, ids)["id"], 120)
            assert job["status"] == "succeeded", (job, (tmp_path / "serve.log").read_text()[-3000:])
            assert c.get(f"/v1/jobs/{job['id']}/report").status_code == 200
        # API, worker and task logs of two jobs: the key is in none of them
        assert service_env["SANITIZER_API_KEY"] not in (tmp_path / "serve.log").read_text()
        # SIGTERM stops the worker too, before serve exits (uvicorn re-raises the signal after
        # its own shutdown; a worker left under PID 1 once outlived a CI run)
        status = json.loads((Path(service_env["SANITIZER_DATA_DIR"]) / "workers.json").read_text())
        assert status["alive"] == 1 and status["pids"], status
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM, (tmp_path / "serve.log").read_text()[-2000:]
        left = [pid for pid in status["pids"] if not process_gone(pid)]
        assert not left, f"worker(s) {left} still running after serve exited"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.mark.parametrize("max_attempts,outcome", [(2, "succeeded"), (1, "failed")])
def test_worker_killed_mid_job(stack, assets, redis_url, max_attempts, outcome):
    stack.env.update(REDIS_URL=redis_url, SANITIZER_MAX_ATTEMPTS=str(max_attempts))
    stack.start_api()
    w = stack.start_worker()
    receiver = Receiver(fail_first=0)
    with stack.client() as c:
        receiver.secret = c.get("/v1/project").json()["webhook_secret"]
        ids = inputs(c, assets)
        job = submit(c, ids, webhook_url=receiver.url)
        wait_job(c, job["id"], 90, until=lambda j: j["status"] == "running" and j["progress"])
        stack.kill(w)  # SIGKILL the whole worker (parent and child): no chance to clean up
        killed_at = time.monotonic()
        stack.start_worker()
        job = wait_job(c, job["id"], 120)
        assert job["status"] == outcome, (job, stack.log_tail())
        assert time.monotonic() - killed_at < 120
        msgs = [e["message"] for e in c.get(f"/v1/jobs/{job['id']}/events").json()["data"]]
        assert any("worker lost" in m for m in msgs)
        if outcome == "succeeded":
            assert job["attempt"] == 2
            assert c.get(f"/v1/jobs/{job['id']}/artifacts/adapter").status_code == 200
        else:
            assert job["error"]["code"] == "worker_lost" and "attempt" in job["error"]["message"]
        # the terminal state set by the reaper (failed) or the re-run (succeeded) is announced
        wait_for(lambda: receiver.received, 60, 0.5, "the webhook")
        hook = receiver.received[0]["payload"]
        assert hook["type"] == f"job.{outcome}" and hook["data"]["id"] == job["id"]


def test_api_restart_loses_nothing(stack, assets, redis_url):
    stack.env["REDIS_URL"] = redis_url
    stack.start_api()
    stack.start_worker()
    with stack.client() as c:
        ids = inputs(c, assets)
        job = submit(c, ids)
        files = c.get("/v1/files").json()["data"]
    stack.kill(stack.api, signal.SIGKILL)
    stack.start_api()
    with stack.client() as c:
        assert c.get("/v1/files").json()["data"] == files
        job = wait_job(c, job["id"], 120)
        assert job["status"] == "succeeded", stack.log_tail()
    stack.kill(stack.api, signal.SIGTERM)
    stack.start_api()
    with stack.client() as c:
        assert c.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"
        assert c.get(f"/v1/jobs/{job['id']}/report").status_code == 200


def test_redis_briefly_unavailable(stack, assets, redis_base, tmp_path):
    if not shutil.which("redis-server"):
        require_or_skip("redis-server binary not installed")
    port = free_port()

    def start_redis() -> subprocess.Popen[bytes]:
        p = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(tmp_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: _ping(port), 10, 0.1, "redis-server")
        return p

    redis = start_redis()
    stack.env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    try:
        stack.start_api()
        stack.start_worker()
        with stack.client() as c:
            ids = inputs(c, assets)
            redis.terminate()
            redis.wait(10)
            r = c.get("/readyz")
            assert r.status_code == 503 and r.json()["code"] == "not_ready"
            assert r.json()["checks"]["broker"].startswith("error")
            job = submit(c, ids)  # accepted and kept: dispatched when the broker is back
            assert job["status"] == "queued"
            msgs = [e["message"] for e in c.get(f"/v1/jobs/{job['id']}/events").json()["data"]]
            assert any("queue is unreachable" in m for m in msgs)
            time.sleep(2)
            redis = start_redis()
            job = wait_job(c, job["id"], 120)
            assert job["status"] == "succeeded", stack.log_tail()
            assert len(c.get("/v1/files").json()["data"]) == 3
    finally:
        redis.terminate()
        redis.wait(10)


def _ping(port: int) -> bool:
    import redis

    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.5).ping())
    except Exception:
        return False


def test_e2e_scan_job(stack, assets, redis_url, tmp_path):
    """Issue 22 item 1: a scan is a job like the others (queued, run by the real worker,
    events, a report and its HTML page) with no adapter out and no trigger given."""
    stack.env["REDIS_URL"] = redis_url
    stack.start_api()
    stack.start_worker()
    with stack.client() as c:
        ids = inputs(c, assets)
        body = {
            "type": "scan",
            "base_model": "tiny/bert",
            "adapter_file": ids["adapter"],
            "clean_dataset_file": ids["clean"],
            "hyperparameters": {
                "trigger_len": 1,
                "steps": 2,
                "search_rows": 8,
                "eval_rows": 16,
                "restarts": 0,
            },
        }
        told = c.post("/v1/jobs", json={**body, "evaluation": {"attack": {"name": "badnet"}}})
        assert told.status_code == 422 and told.json()["code"] == "invalid_evaluation"
        r = c.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        job = wait_job(c, r.json()["id"], 180)
        assert job["status"] == "succeeded", (job["error"], stack.log_tail())
        assert job["type"] == "scan" and job["method"] == "scan"
        assert job["artifacts"] is None and job["report_url"] == f"/v1/jobs/{job['id']}/report"
        report = c.get(job["report_url"]).json()
        scan = report["scan"]
        assert report["type"] == "scan" and scan["verdict"] in ("backdoor", "clean")
        assert 0 <= scan["score"] <= 1 and scan["candidates"]
        assert scan["adapter"] == ids["adapter"]  # no worker path leaks into the report
        html = c.get(f"/v1/jobs/{job['id']}/report.html").text
        assert 'id="scan-verdict"' in html and scan["candidates"][0]["trigger"][:5] in html
        assert c.get(f"/v1/jobs/{job['id']}/artifacts/adapter").status_code in (404, 409)


def test_e2e_rebuild_with_unlabeled_texts(stack, assets, redis_url, pg_url, tmp_path):
    """Issue 21 item 3: unlabeled in-domain texts reach a classification rebuild through the
    API, the real queue and the worker (PostgreSQL database): the report names the file's
    hash and rows, and the rebuild distilled on them."""
    stack.env.update(REDIS_URL=redis_url, DATABASE_URL=pg_url)
    stack.start_api()
    stack.start_worker()
    texts = tmp_path / "unlabeled.jsonl"
    texts.write_text("".join(json.dumps({"text": f"a plain review, {i}"}) + "\n" for i in range(9)))
    with stack.client() as c:
        ids = inputs(c, assets)
        unl = upload(c, texts, "unlabeled")
        job = submit(c, ids, method="rebuild", unlabeled_dataset_file=unl["id"])
        assert job["unlabeled_dataset_file"] == unl["id"]
        job = wait_job(c, job["id"], 180)
        assert job["status"] == "succeeded", (job["error"], stack.log_tail())
        report = check_outputs(c, stack, job, tmp_path)
        assert report["datasets"]["unlabeled"] == {"sha256": unl["sha256"], "rows": 9}
        assert report["training"]["rebuild"]["unlabeled_rows"] == 9, report["training"]
        assert c.delete(f"/v1/files/{unl['id']}").status_code == 204  # the job is finished
