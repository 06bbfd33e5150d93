"""A small stand-in of the service API (the shapes of app/ as built: problem+json with
``code``/``hint``, pages with ``has_more``/``last_id``, jobs newest first, 409
``report_not_ready``) for client tests that need
behaviour the real service must not have: scripted faults (429/503 with Retry-After, 502),
tampered archives, wrong upload checksums, and job outcomes chosen by the test.

Jobs advance one step per GET (3 steps), then end as chosen by ``metadata.scenario``:
``pass`` (ASR 2%), ``asr_high`` (ASR 40%), ``ca_drop`` (CA -5 points), ``fail``, ``cancel``.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
import zipfile
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

API_KEY = "test-key"
TOTAL_STEPS = 3


def problem(status: int, title: str, code: str, detail: str, **extra: Any) -> JSONResponse:
    body = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "code": code,
        "detail": detail,
        "request_id": f"req_{uuid.uuid4().hex[:8]}",
        **extra,
    }
    return JSONResponse(body, status, media_type="application/problem+json")


def adapter_archive(files: dict[str, bytes], manifest: dict[str, Any] | None = None) -> bytes:
    manifest = manifest or {"files": {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("manifest.json", json.dumps(manifest))
    return buf.getvalue()


def report_for(scenario: str) -> dict[str, Any]:
    ca_after = 0.83 if scenario == "ca_drop" else 0.875
    asr_after = 0.4 if scenario == "asr_high" else 0.02
    return {
        "schema_version": 1,
        "method": "w2sdefense",
        "task": "classification",
        "base_model": {"id": "tiny/bert", "sha256": "0" * 64},
        "metrics": {
            "before": {
                "clean_accuracy": 0.88,
                "attack_success_rate": 0.99,
                "n_clean": 100,
                "n_triggered": 50,
            },
            "after": {
                "clean_accuracy": ca_after,
                "attack_success_rate": asr_after,
                "n_clean": 100,
                "n_triggered": 50,
            },
        },
        "history": [{"step": i, "epoch": 0, "losses": {"ce": 1.0 / i}} for i in (1, 2, 3)],
        **(
            {
                "scan": {
                    "verdict": "backdoor" if scenario.endswith("backdoor") else "clean",
                    "score": 0.97 if scenario.endswith("backdoor") else 0.1,
                    "threshold": 0.8,
                    "target_label": 0,
                    "target_name": "negative",
                    "candidates": [{"trigger": "cf", "target_name": "negative", "flip_rate": 0.97}],
                }
            }
            if scenario.startswith("scan")
            else {}
        ),
    }


@dataclass
class StubState:
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    idempotency: dict[str, str] = field(default_factory=dict)
    # (method, path) -> list of (status, retry_after) answered before the real handler
    faults: dict[tuple[str, str], list[tuple[int, str | None]]] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    wrong_upload_sha: bool = False
    upload_fields: dict[str, dict[str, str]] = field(default_factory=dict)  # file id -> form
    tamper: str | None = None  # "body" | "manifest" | "extra_file" | "no_header"
    adapter_files: dict[str, bytes] = field(
        default_factory=lambda: {
            "adapter_config.json": b'{"peft_type": "LORA", "r": 8}',
            "adapter_model.safetensors": b"\x00" * 1024,
        }
    )


def create_app(state: StubState) -> Starlette:
    async def guard(request: Request) -> Response | None:
        state.requests.append((request.method, request.url.path, dict(request.headers)))
        queue = state.faults.get((request.method, request.url.path))
        if queue:
            status, retry_after = queue.pop(0)
            headers = {"Retry-After": retry_after} if retry_after is not None else {}
            r = problem(status, "Unavailable", "unavailable", "try again")
            r.headers.update(headers)
            return r
        if request.headers.get("authorization") != f"Bearer {API_KEY}":
            return problem(
                401, "Unauthorized", "invalid_api_key", "send 'Authorization: Bearer <key>'"
            )
        return None

    def view(fn: Any) -> Any:
        async def wrapped(request: Request) -> Response:
            return await guard(request) or await fn(request)

        return wrapped

    async def upload(request: Request) -> Response:
        form = await request.form()
        purpose = form.get("purpose")
        if purpose not in ("adapter", "dataset"):
            return problem(
                422,
                "Unprocessable",
                "invalid_purpose",
                "purpose must be adapter or dataset",
                errors=[{"loc": ["purpose"], "msg": "adapter or dataset"}],
            )
        f = form["file"]
        data = await f.read()  # type: ignore[union-attr]
        fid = f"file_{uuid.uuid4().hex[:10]}"
        sha = hashlib.sha256(data).hexdigest()
        if state.wrong_upload_sha:
            sha = hashlib.sha256(data + b"x").hexdigest()
        obj = {
            "id": fid,
            "filename": f.filename,
            "purpose": purpose,  # type: ignore[union-attr]
            "bytes": len(data),
            "sha256": sha,
            "created_at": "2026-01-01T00:00:00Z",
        }
        state.files[fid], state.blobs[fid] = obj, data
        state.upload_fields[fid] = {k: str(v) for k, v in form.items() if k != "file"}
        return JSONResponse(obj, 201)

    async def file_item(request: Request) -> Response:
        fid = request.path_params["fid"]
        if fid not in state.files:
            return problem(404, "Not Found", "file_not_found", f"no file {fid}")
        if request.method == "DELETE":
            state.files.pop(fid)
            return Response(status_code=204)
        return JSONResponse(state.files[fid])

    async def jobs(request: Request) -> Response:
        if request.method == "GET":  # newest first, like the service
            items = sorted(state.jobs.values(), key=lambda j: j["id"], reverse=True)
            after = request.query_params.get("after")
            if after:
                items = [j for j in items if j["id"] < after]
            limit = int(request.query_params.get("limit") or 20)
            page = items[:limit]
            return JSONResponse(
                {
                    "object": "list",
                    "data": page,
                    "has_more": len(items) > limit,
                    "last_id": page[-1]["id"] if page else None,
                }
            )
        body = await request.json()
        key = request.headers.get("idempotency-key")
        if key and key in state.idempotency:
            return JSONResponse(state.jobs[state.idempotency[key]], 202)
        if body.get("method") not in ("w2sdefense", "crow", "finetune"):
            return problem(
                422,
                "Unprocessable",
                "unknown_method",
                f"unknown method {body.get('method')!r}",
                errors=[{"loc": ["body", "method"], "msg": "w2sdefense|crow|finetune"}],
            )
        if body.get("clean_dataset_file") not in state.files:
            return problem(404, "Not Found", "file_not_found", "clean_dataset_file not found")
        jid = f"job_{len(state.jobs):04d}_{uuid.uuid4().hex[:6]}"
        state.jobs[jid] = {
            "id": jid,
            "status": "queued",
            "method": body["method"],
            "base_model": body.get("base_model"),
            "metadata": body.get("metadata") or {},
            "request": body,
            "progress": None,
            "error": None,
            "polls": 0,
            "created_at": "2026-01-01T00:00:00Z",
        }
        if key:
            state.idempotency[key] = jid
        return JSONResponse(state.jobs[jid], 202)

    def advance(job: dict[str, Any]) -> None:
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return
        job["polls"] += 1
        step = job["polls"]
        scenario = job["metadata"].get("scenario", "pass")
        if step <= TOTAL_STEPS:
            job["status"] = "running"
            job["progress"] = {
                "phase": "defense",
                "step": step,
                "total_steps": TOTAL_STEPS,
                "losses": {"ce": round(1.0 / step, 4)},
                "eta_seconds": float(TOTAL_STEPS - step),
            }
            return
        if scenario == "fail":
            job["status"] = "failed"
            job["error"] = {"code": "training_diverged", "message": "loss became NaN"}
        elif scenario == "cancel":
            job["status"] = "cancelled"
        else:
            job["status"] = "succeeded"

    async def job_item(request: Request) -> Response:
        jid = request.path_params["jid"]
        job = state.jobs.get(jid)
        if job is None:
            return problem(404, "Not Found", "job_not_found", f"no job {jid}")
        advance(job)
        return JSONResponse(job)

    async def job_cancel(request: Request) -> Response:
        job = state.jobs.get(request.path_params["jid"])
        if job is None:
            return problem(404, "Not Found", "job_not_found", "no such job")
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return problem(409, "Conflict", "job_finished", f"job is {job['status']}")
        job["status"] = "cancelled"
        return JSONResponse(job)

    async def job_events(request: Request) -> Response:
        job = state.jobs.get(request.path_params["jid"])
        if job is None:
            return problem(404, "Not Found", "job_not_found", "no such job")
        events = [
            {
                "id": str(i),
                "level": "info",
                "message": f"step {i}",
                "metrics": {"ce": 1.0 / i},
                "created_at": "2026-01-01T00:00:00Z",
            }
            for i in range(1, 6)
        ]
        after = request.query_params.get("after")
        if after:
            events = [e for e in events if int(e["id"]) > int(after)]
        page = events[:2]
        return JSONResponse(
            {
                "object": "list",
                "data": page,
                "has_more": len(events) > 2,
                "last_id": page[-1]["id"] if page else None,
            }
        )

    def finished(jid: str, what: str) -> tuple[dict[str, Any] | None, Response | None]:
        job = state.jobs.get(jid)
        if job is None:
            return None, problem(404, "Not Found", "job_not_found", "no such job")
        if job["status"] != "succeeded":
            return None, problem(
                409,
                "Conflict",
                f"{what}_not_ready",
                f"job is {job['status']}",
                hint="poll the job until status is succeeded",
                status_now=job["status"],
            )
        return job, None

    async def job_report(request: Request) -> Response:
        job, err = finished(request.path_params["jid"], "report")
        if err:
            return err
        assert job is not None
        return JSONResponse(report_for(job["metadata"].get("scenario", "pass")))

    async def job_adapter(request: Request) -> Response:
        job, err = finished(request.path_params["jid"], "artifact")
        if err:
            return err
        files = dict(state.adapter_files)
        manifest = None
        if state.tamper == "manifest":  # consistent header, but a file differs from manifest
            manifest = {"files": {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}}
            files["adapter_model.safetensors"] = b"\x01" * 1024
        if state.tamper == "extra_file":
            manifest = {"files": {n: hashlib.sha256(b).hexdigest() for n, b in files.items()}}
            files["payload.pkl"] = b"cos\nsystem\n"
        data = adapter_archive(files, manifest)
        sha = hashlib.sha256(data).hexdigest()
        if state.tamper == "body":  # bytes changed in transit after the header was computed
            data = data[:-10] + b"\x00" * 10
        headers = {"Content-Disposition": f'attachment; filename="{job["id"]}-adapter.zip"'}
        if state.tamper != "no_header":
            headers["X-Content-SHA256"] = sha
        return Response(data, media_type="application/zip", headers=headers)

    return Starlette(
        routes=[
            Route("/v1/files", view(upload), methods=["POST"]),
            Route("/v1/files/{fid}", view(file_item), methods=["GET", "DELETE"]),
            Route("/v1/jobs", view(jobs), methods=["GET", "POST"]),
            Route("/v1/jobs/{jid}", view(job_item), methods=["GET"]),
            Route("/v1/jobs/{jid}/cancel", view(job_cancel), methods=["POST"]),
            Route("/v1/jobs/{jid}/events", view(job_events), methods=["GET"]),
            Route("/v1/jobs/{jid}/report", view(job_report), methods=["GET"]),
            Route("/v1/jobs/{jid}/artifacts/adapter", view(job_adapter), methods=["GET"]),
        ]
    )
