"""SDK and CLI against the REAL service: `sanitizer serve` (embedded mode: API + worker,
SQLite) as a subprocess, tiny models built in code. Faults are injected by small proxies in
front of it (503/429 with Retry-After, a tampered adapter archive), never by mocking it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port, serve_in_thread

from sanitizer.tiny import write_sentiment_csv
from sanitizer_client import ChecksumMismatchError, Client


def _cli(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sanitizer_cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("live")
    base_env = {
        **os.environ,
        "HOME": str(root),
        "SANITIZER_MODEL_STORE": str(root / "store"),
        "SANITIZER_DATA_DIR": str(root / "service"),
        "COLUMNS": "200",
    }
    base_env = {
        k: v
        for k, v in base_env.items()
        if k not in ("SANITIZER_URL", "SANITIZER_API_KEY", "DATABASE_URL", "REDIS_URL")
    }
    from sanitizer.tiny import build_tiny_model

    build_tiny_model(root / "store", "tiny/bert", "bert")
    build_tiny_model(root / "store", "tiny/teacher", "bert", hidden_size=16, num_layers=2, seed=1)
    files = {
        "train": write_sentiment_csv(root / "train.csv", 96, 0),
        "clean": write_sentiment_csv(root / "clean.csv", 40, 1),
        "test": write_sentiment_csv(root / "test.csv", 40, 2),
    }
    r = _cli(
        base_env,
        "attack",
        "--base-model",
        "tiny/bert",
        "--data",
        str(files["train"]),
        "--attack",
        "badnet",
        "--trigger",
        "cf",
        "--target-label",
        "0",
        "--poison-rate",
        "0.2",
        "--epochs",
        "1",
        "--out",
        str(root / "backdoored"),
    )
    assert r.returncode == 0, r.stderr

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(root / "serve.log", "wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sanitizer_cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=base_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (root / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "service did not start"
            time.sleep(0.5)
        k = _cli(base_env, "keys", "create", "--project", "client-tests", "--json", timeout=60)
        assert k.returncode == 0, k.stderr
        key = json.loads(k.stdout)["key"]
        env = {**base_env, "SANITIZER_URL": url, "SANITIZER_API_KEY": key}
        yield {
            "url": url,
            "key": key,
            "env": env,
            "root": root,
            "adapter": root / "backdoored",
            **files,
        }
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the service we started, and its worker
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _submit_args(live: dict[str, Any], *extra: str) -> list[str]:
    return [
        "submit",
        "--method",
        "finetune",
        "--base-model",
        "tiny/bert",
        "--adapter",
        str(live["adapter"]),
        "--clean-data",
        str(live["clean"]),
        "--test-data",
        str(live["test"]),
        "--attack",
        "badnet",
        "--trigger",
        "cf",
        "--target-label",
        "0",
        "--param",
        "epochs=1",
        "--poll-interval",
        "0.5",
        *extra,
    ]


def test_happy_path_exit_0_download_verified_report_matches(
    live: dict[str, Any], tmp_path: Path
) -> None:
    out = _cli(
        live["env"],
        *_submit_args(
            live,
            "--max-asr",
            "1.0",
            "--max-ca-drop",
            "1.0",
            "--download",
            str(tmp_path / "clean"),
            "--report-html",
            str(tmp_path / "r.html"),
            "--json",
        ),
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["download"]["verified"] is True
    assert (tmp_path / "clean" / "adapter_model.safetensors").exists()
    # the manifest check of docs/CLIENT.md, on the extracted folder
    manifest = json.loads((tmp_path / "clean" / "manifest.json").read_text())
    assert {"adapter_config.json", "adapter_model.safetensors"} <= set(manifest["files"])
    for name, sha in manifest["files"].items():
        assert hashlib.sha256((tmp_path / "clean" / name).read_bytes()).hexdigest() == sha
    with Client(live["url"], live["key"]) as c:
        report = c.jobs.report(result["job"]["id"])
    assert result["metrics"] == report["metrics"]
    html = (tmp_path / "r.html").read_text()
    asr = report["metrics"]["after"]["attack_success_rate"]
    assert f'data-key="metrics.after.attack_success_rate" data-value="{json.dumps(asr)}"' in html


def test_submit_rebuild_with_unlabeled_texts(live: dict[str, Any], tmp_path: Path) -> None:
    """--unlabeled-data is uploaded (purpose=unlabeled) and reaches the rebuild through the
    service; a method that cannot use it is refused before anything runs (exit 3)."""
    texts = tmp_path / "texts.csv"
    texts.write_text("text\n" + "".join(f"just a sentence {i}\n" for i in range(7)))
    out = _cli(
        live["env"],
        *_submit_args(live, "--method", "rebuild", "--unlabeled-data", str(texts), "--json"),
        "--wait",
    )
    assert out.returncode == 0, out.stderr
    jid = json.loads(out.stdout)["job"]["id"]
    with Client(live["url"], live["key"]) as c:
        report = c.jobs.report(jid)
        assert c.jobs.get(jid).raw["unlabeled_dataset_file"]
    assert report["datasets"]["unlabeled"]["rows"] == 7
    refused = _cli(
        live["env"], *_submit_args(live, "--method", "crow", "--unlabeled-data", str(texts))
    )
    assert refused.returncode == 3 and "invalid_unlabeled_data" in refused.stderr, refused.stderr


def test_policy_failed_exit_1(live: dict[str, Any]) -> None:
    out = _cli(live["env"], *_submit_args(live, "--max-ca-drop", "-1", "--json"))
    assert out.returncode == 1, out.stderr
    assert json.loads(out.stdout)["policy"]["passed"] is False


def test_cancelled_job_exit_2(live: dict[str, Any]) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sanitizer_cli",
            *_submit_args(live, "--param", "epochs=50", "--wait", "--json"),
        ],
        env=live["env"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    with Client(live["url"], live["key"]) as c:
        deadline = time.monotonic() + 120
        job = None
        while job is None and time.monotonic() < deadline:
            running = [j for j in c.jobs.list(limit=50) if not j.done]
            job = running[0] if running else None
            time.sleep(0.2)
        assert job is not None, "the submitted job never appeared"
        c.jobs.cancel(job.id)
        # the worker stops at its next step (not the reaper, minutes later)
        _, err = proc.communicate(timeout=90)
        assert proc.returncode == 2, err
        assert "cancelled" in err
        msgs = [e.message for e in c.jobs.events(job.id)]
    assert msgs[-1] in ("cancelled by request", "cancelled before a worker started it"), msgs


def test_input_errors_exit_3(live: dict[str, Any], tmp_path: Path) -> None:
    bad = _cli(
        live["env"],
        "submit",
        "--method",
        "nope",
        "--base-model",
        "tiny/bert",
        "--clean-data",
        str(live["clean"]),
    )
    assert bad.returncode == 3, bad.stderr
    # checked against the service's GET /v1/methods before any upload (issue 26 item 10)
    assert "--method nope: unknown on the service" in bad.stderr and "rebuild" in bad.stderr
    assert "nothing was uploaded" in bad.stderr
    before = {f.id for f in Client(live["url"], live["key"]).files.list()}
    no_model = _cli(
        live["env"], "submit", "--base-model", "org/absent", "--clean-data", str(live["clean"])
    )
    assert no_model.returncode == 3, no_model.stderr
    assert "org/absent" in no_model.stderr and "tiny/bert" in no_model.stderr  # what exists
    assert str(live["root"]) not in no_model.stderr  # no server path reaches a remote client
    assert {f.id for f in Client(live["url"], live["key"]).files.list()} == before  # no orphans
    no_base = _cli(
        live["env"], "submit", "--method", "rebuild", "--base-model", "tiny/bert",
        "--clean-data", str(live["clean"]), "-p", "trusted_base=org/absent-base",
    )  # fmt: skip
    assert no_base.returncode == 3, no_base.stderr
    assert (
        "-p trusted_base org/absent-base" in no_base.stderr
        and "nothing was uploaded" in no_base.stderr
    )
    assert {f.id for f in Client(live["url"], live["key"]).files.list()} == before
    pickle_adapter = tmp_path / "pickled"
    pickle_adapter.mkdir()
    (pickle_adapter / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    (pickle_adapter / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    unsafe = _cli(
        live["env"],
        *_submit_args(live)[:5],  # submit --method finetune --base-model tiny/bert
        "--adapter",
        str(pickle_adapter),
        "--clean-data",
        str(live["clean"]),
    )
    assert unsafe.returncode == 3, unsafe.stderr
    assert "unsafe_file" in unsafe.stderr
    bad_param = _cli(live["env"], *_submit_args(live, "--param", "epochs=0", "--param", "lr=1"))
    assert bad_param.returncode == 3, bad_param.stderr
    assert "invalid_config" in bad_param.stderr
    assert "epochs" in bad_param.stderr and "lr" in bad_param.stderr  # every bad field named
    assert "allowed fields" in bad_param.stderr  # the service's hint reaches the user
    missing = _cli(live["env"], "jobs", "get", "job_does_not_exist")
    assert missing.returncode == 3 and "job_not_found" in missing.stderr


def test_unreachable_exit_4(live: dict[str, Any]) -> None:
    env = {**live["env"], "SANITIZER_URL": f"http://127.0.0.1:{free_port()}"}
    assert _cli(env, "jobs", "list").returncode == 4


def _proxy(target: str, state: dict[str, Any]) -> Any:
    """Forward to the real service; answer scripted faults first; optionally tamper."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def forward(request: Request) -> Response:
        key = (request.method, request.url.path)
        state.setdefault("seen", []).append((*key, request.headers.get("idempotency-key")))
        faults = state.get("faults", {}).get(key)
        if faults:
            status = faults.pop(0)
            return JSONResponse(
                {"title": "busy", "status": status, "code": "busy"},
                status,
                headers={"Retry-After": "1"},
                media_type="application/problem+json",
            )
        async with httpx.AsyncClient(base_url=target, timeout=60) as c:
            r = await c.request(
                request.method,
                request.url.path,
                params=list(request.query_params.multi_items()),
                content=await request.body(),
                headers=[
                    (k, v)
                    for k, v in request.headers.items()
                    if k.lower() not in ("host", "content-length")
                ],
            )
        body = r.content
        if state.get("tamper") and request.url.path.endswith("/artifacts/adapter"):
            body = body[:-16] + bytes(16)
        headers = {
            k: v
            for k, v in r.headers.items()
            if k.lower() not in ("content-length", "content-encoding", "transfer-encoding")
        }
        return Response(body, r.status_code, headers=headers)

    return Starlette(
        routes=[Route("/{path:path}", forward, methods=["GET", "POST", "DELETE", "PUT", "PATCH"])]
    )


def test_retry_429_503_through_proxy_creates_one_job_and_progress_is_reported(
    live: dict[str, Any],
) -> None:
    state: dict[str, Any] = {"faults": {("POST", "/v1/jobs"): [503, 429]}}
    with (
        serve_in_thread(_proxy(live["url"], state)) as proxy_url,
        Client(proxy_url, live["key"], backoff_base=0.05) as c,
    ):
        f = c.files.upload(live["clean"], purpose="dataset")
        t0 = time.monotonic()
        job = c.jobs.create(
            method="finetune",
            base_model="tiny/bert",
            clean_dataset_file=f,
            hyperparameters={"epochs": 1},
            metadata={"case": "retry"},
        )
        assert time.monotonic() - t0 >= 2.0  # two Retry-After: 1 honoured
        posts = [s for s in state["seen"] if s[:2] == ("POST", "/v1/jobs")]
        assert len(posts) == 3 and len({s[2] for s in posts}) == 1
        assert [j.id for j in c.jobs.list(metadata={"case": "retry"})] == [job.id]
        seen: list[Any] = []
        done = c.jobs.wait(job.id, timeout=300, poll_interval=0.2, on_progress=seen.append)
        assert done.succeeded, done.error
        assert seen and seen[-1].id == job.id and seen[-1].succeeded  # called on every poll
        # the worker reported the defense's steps (a tiny job may finish between two polls,
        # so they are checked in the event log, which keeps each one)
        defense = [e.metrics for e in c.jobs.events(job.id) if e.raw.get("phase") == "defense"]
        assert any(m.get("total_steps") and "loss" in m for m in defense), defense
        # progress is per phase (evaluate_before, defense, evaluate_after ...): the step
        # restarts with each phase and only moves forward within one
        by_phase: dict[str, list[int]] = {}
        for j in seen:
            if j.progress.phase and j.progress.step is not None:
                by_phase.setdefault(j.progress.phase, []).append(j.progress.step)
        assert by_phase and all(steps == sorted(steps) for steps in by_phase.values()), by_phase


def _finished_job(live: dict[str, Any], **evaluation: Any) -> str:
    """A job of its own that ran to success on the live service (no test order needed)."""
    with Client(live["url"], live["key"]) as c:
        clean = c.files.upload(live["clean"])
        test = c.files.upload(live["test"])
        job = c.jobs.create(
            method="finetune",
            base_model="tiny/bert",
            adapter_file=c.files.upload(live["adapter"]),
            clean_dataset_file=clean,
            test_dataset_file=test,
            attack={"name": "badnet", "trigger": "cf", "target_label": 0},
            evaluation=evaluation or None,
            hyperparameters={"epochs": 1},
        )
        done = c.jobs.wait(job.id, timeout=300, poll_interval=0.3)
        assert done.succeeded, done.error
        return job.id


def test_upload_corrupted_in_transit_is_detected_and_deleted(live: dict[str, Any]) -> None:
    """The proxy rewrites the sha256 the service computed: the SDK must refuse the upload
    and delete the server's copy."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def forward(request: Request) -> Response:
        async with httpx.AsyncClient(base_url=live["url"], timeout=60) as c:
            r = await c.request(
                request.method,
                request.url.path,
                params=list(request.query_params.multi_items()),
                content=await request.body(),
                headers=[(k, v) for k, v in request.headers.items() if k.lower() != "host"],
            )
        body = r.content
        # 201: a new file; 200: the same bytes were uploaded before and the file is reused
        if (
            request.method == "POST"
            and request.url.path == "/v1/files"
            and r.status_code in (200, 201)
        ):
            obj = json.loads(body)
            obj["sha256"] = "0" * 64
            body = json.dumps(obj).encode()
        return Response(body, r.status_code, media_type=r.headers.get("content-type"))

    app = Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST", "DELETE"])])
    with Client(live["url"], live["key"]) as c:
        before = {f.id for f in c.files.list(limit=100)}
    with serve_in_thread(app) as proxy_url, Client(proxy_url, live["key"]) as c:
        with pytest.raises(ChecksumMismatchError) as ei:
            c.files.upload(live["clean"], purpose="dataset")
    assert ei.value.actual == "0" * 64
    with Client(live["url"], live["key"]) as c:
        assert {f.id for f in c.files.list(limit=100)} == before  # nothing corrupt left behind


def test_failed_job_exit_2_with_the_reason(live: dict[str, Any]) -> None:
    """A job the worker cannot run (LoRA target modules the model does not have) fails; the
    CLI exits 2 and shows the service's error."""
    out = _cli(
        live["env"],
        *_submit_args(live, "--param", 'target_modules=["no_such_layer"]', "--wait", "--json"),
    )
    assert out.returncode == 2, (out.stdout, out.stderr)
    result = json.loads(out.stdout)
    assert result["job"]["status"] == "failed"
    assert result["job"]["error"]["code"] and result["job"]["error"]["message"]
    assert result["job"]["error"]["code"] == "invalid_config"  # a clear input error, not a crash
    assert "no_such_layer" in out.stderr and "its layers are" in out.stderr


def test_async_client_against_the_service(live: dict[str, Any]) -> None:
    import asyncio

    from sanitizer_client import AsyncClient

    jid = _finished_job(live)

    async def main() -> tuple[Any, list[Any], dict[str, Any]]:
        async with AsyncClient(live["url"], live["key"]) as c:
            job = await c.jobs.get(jid)
            events = [e async for e in c.jobs.events(jid)]
            report = await c.jobs.report(jid)
            return job, events, report

    job, events, report = asyncio.run(main())
    assert job.succeeded and events and events[-1].message
    with Client(live["url"], live["key"]) as c:
        assert c.jobs.report(jid) == report


@pytest.mark.browser
@pytest.mark.slow
def test_served_report_page_in_a_browser(live: dict[str, Any], tmp_path: Path) -> None:
    """The page the service serves for a real job (with a second trigger and the fine-tuning
    baseline), rendered by chromium: every number shown is the JSON report's."""
    from test_report_browser import _chromium
    from test_report_html import _lookup, parse

    from sanitizer.report_html import format_value

    jid = _finished_job(
        live,
        extra_attacks=[{"name": "badnet", "trigger": "mn", "target_label": 0}],
        baseline=True,
    )
    auth = {"Authorization": f"Bearer {live['key']}"}
    report = httpx.get(f"{live['url']}/v1/jobs/{jid}/report", headers=auth).json()
    page = tmp_path / "served.html"
    page.write_text(httpx.get(f"{live['url']}/v1/jobs/{jid}/report.html", headers=auth).text)
    out = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    dom = out.stdout
    assert "<main>" in dom and jid in dom, out.stderr[-2000:]
    nums = parse(dom).items
    keys = {k for k, _, _ in nums}
    assert "metrics.after.attack_success_rate" in keys
    assert any(k.startswith("baseline.") for k in keys), keys
    assert any(k.startswith("metrics.per_attack.") for k in keys), keys
    for key, raw, text in nums:
        value = _lookup(report, key)
        assert json.loads(raw) == value, key
        assert text == format_value(value, key), (key, text)


def test_tampered_download_detected_exit_5(live: dict[str, Any], tmp_path: Path) -> None:
    jid = _finished_job(live)
    state: dict[str, Any] = {"tamper": True}
    with serve_in_thread(_proxy(live["url"], state)) as proxy_url:
        with Client(proxy_url, live["key"]) as c, pytest.raises(ChecksumMismatchError):
            c.jobs.download_adapter(jid, tmp_path / "out")
        env = {**live["env"], "SANITIZER_URL": proxy_url}
        out = _cli(env, *_submit_args(live, "--download", str(tmp_path / "cli")))
        assert out.returncode == 5, out.stderr
