"""Every endpoint, status code and error body, against the app in-process (no worker)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.service.helpers import (
    REPO,
    adapter_config,
    finish_with_sample_report,
    tar_bytes,
    zip_bytes,
)

PROBLEM = "application/problem+json"


def problem(r: Any, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["status"] == status and body["code"] == code
    assert body["title"] and body["detail"] and body["type"].endswith(code)
    assert body["request_id"] == r.headers["x-request-id"]
    if status < 500:
        assert body.get("hint"), f"a {status} must say how to fix it: {body}"
    return body


def up(api: Any, name: str, data: bytes, purpose: str, **fields: str) -> Any:
    return api.post("/v1/files", data={"purpose": purpose, **fields}, files={"file": (name, data)})


def store_is_clean(api: Any) -> None:
    """Nothing kept after a rejected upload: no file rows, no blobs, no temp files."""
    data: Path = api.data_dir
    assert api.get("/v1/files").json()["data"] == []
    assert (
        not list((data / "artifacts" / "files").glob("*"))
        if (data / "artifacts" / "files").exists()
        else True
    )
    assert list((data / "tmp").glob("*")) == [] if (data / "tmp").exists() else True
    assert not (data.parent / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()


def dataset_id(api: Any, assets: dict[str, Path], key: str = "clean") -> str:
    r = up(api, assets[key].name, assets[key].read_bytes(), "dataset")
    assert r.status_code in (200, 201), r.text  # 200: these bytes were uploaded before
    return r.json()["id"]


def job_body(ds: str, **kw: Any) -> dict[str, Any]:
    return {"method": "finetune", "base_model": "tiny/bert", "clean_dataset_file": ds, **kw}


# ------------------------------------------------------------------ health, auth, plumbing


def test_health_ready_metrics_openapi(api):
    assert api.get("/healthz").json() == {"status": "ok"}
    r = api.get("/readyz")
    assert r.status_code == 200 and r.json() == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "ok"},
    }
    m = api.get("/metrics").text
    assert 'sanitizer_jobs{status="queued"}' in m and "sanitizer_queue_depth" in m
    paths = api.get("/openapi.json").json()["paths"]
    for p in (
        "/v1/files",
        "/v1/files/{file_id}",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/events",
        "/v1/jobs/{job_id}/report",
        "/v1/jobs/{job_id}/report.html",
        "/v1/jobs/{job_id}/artifacts/adapter",
        "/readyz",
    ):
        assert p in paths


def test_request_id_is_echoed_or_generated(api):
    assert (
        api.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"]
        == "abc-123"
    )
    assert api.get("/healthz").headers["x-request-id"].startswith("req_")
    body = problem(api.get("/v1/nope", headers={"X-Request-ID": "trace-9"}), 404, "not_found")
    assert body["request_id"] == "trace-9" and body["detail"] == "no route GET /v1/nope"


def test_missing_invalid_and_revoked_keys(api):
    body = problem(api.get("/v1/jobs", headers={"Authorization": ""}), 401, "missing_api_key")
    assert "Authorization: Bearer" in body["hint"]
    problem(
        api.get("/v1/jobs", headers={"Authorization": "Bearer sk_nope_nope"}),
        401,
        "invalid_api_key",
    )
    other = {"Authorization": f"Bearer {api.key_b}"}
    assert api.get("/v1/jobs", headers=other).status_code == 200
    from jobstore.db import session_scope
    from jobstore.keys import revoke_key

    with session_scope() as s:
        revoke_key(s, api.key_b_id)
    # the API caches a verified key for SANITIZER_AUTH_CACHE_SECONDS (1 s in the tests)
    deadline = time.monotonic() + 3
    while (r := api.get("/v1/jobs", headers=other)).status_code == 200:
        assert time.monotonic() < deadline, "a revoked key still worked after the cache time"
        time.sleep(0.1)
    problem(r, 401, "invalid_api_key")
    assert r.headers["www-authenticate"] == "Bearer"


def test_status_poll_is_one_query(api, assets):
    """GET /v1/jobs/{id} with a recently verified key costs one indexed read; the session
    factory is built once per engine (a new one per request made the GC stall polls)."""
    from sqlalchemy import event

    from jobstore.db import get_engine, session_factory

    assert session_factory() is session_factory()
    job = api.post("/v1/jobs", json=job_body(dataset_id(api, assets))).json()
    statements: list[str] = []

    def count(conn, cursor, statement, *_a) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    event.listen(get_engine(), "before_cursor_execute", count)
    try:
        assert api.get(f"/v1/jobs/{job['id']}").status_code == 200  # key verified and cached
        statements.clear()
        for _ in range(5):
            assert api.get(f"/v1/jobs/{job['id']}").status_code == 200
    finally:
        event.remove(get_engine(), "before_cursor_execute", count)
    assert len(statements) == 5, statements


def test_project_endpoint_gives_webhook_secret(api):
    body = api.get("/v1/project").json()
    assert body["name"] == "project-a" and body["webhook_secret"].startswith("whsec_")


def test_api_never_imports_torch():
    code = (
        "import sys, app.main, app.routers.jobs, app.uploads\n"
        "from sanitizer.defenses.registry import CONFIGS, config_for\n"
        "for m in CONFIGS: config_for(m, {'epochs': 1})\n"
        "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ files


def test_file_lifecycle_and_pagination(api, assets):
    clean = assets["clean"].read_bytes()
    ids = [
        up(api, f"c{i}.csv", clean + f"one more row {i},positive\n".encode(), "dataset").json()[
            "id"
        ]
        for i in range(3)
    ]
    r = up(api, "a.zip", assets["adapter"].read_bytes(), "adapter")
    assert r.status_code == 201, r.text
    adapter = r.json()
    assert (
        adapter["details"]["base_model"] == "tiny/bert"
        and adapter["details"]["peft_type"] == "LORA"
    )
    import hashlib

    assert adapter["sha256"] == hashlib.sha256(assets["adapter"].read_bytes()).hexdigest()
    assert adapter["bytes"] == assets["adapter"].stat().st_size
    f = api.get(f"/v1/files/{ids[0]}").json()
    assert f["purpose"] == "dataset" and f["details"]["rows"] == 41
    assert f["details"]["label_names"] == ["negative", "positive"]

    page = api.get("/v1/files", params={"limit": 2, "purpose": "dataset"}).json()
    assert [x["id"] for x in page["data"]] == ids[::-1][:2] and page["has_more"] is True
    page2 = api.get(
        "/v1/files", params={"limit": 2, "purpose": "dataset", "after": page["last_id"]}
    ).json()
    assert [x["id"] for x in page2["data"]] == [ids[0]] and page2["has_more"] is False

    other = {"Authorization": f"Bearer {api.key_b}"}
    problem(api.get(f"/v1/files/{ids[0]}", headers=other), 404, "file_not_found")
    assert api.get("/v1/files", headers=other).json()["data"] == []
    problem(api.delete(f"/v1/files/{ids[0]}", headers=other), 404, "file_not_found")

    assert api.delete(f"/v1/files/{ids[0]}").status_code == 204
    problem(api.get(f"/v1/files/{ids[0]}"), 404, "file_not_found")
    assert not (api.data_dir / "artifacts" / "files" / ids[0]).exists()


@pytest.mark.parametrize(
    "name,data,purpose,status,code",
    [
        (
            "a.zip",
            zip_bytes(
                {
                    "adapter_config.json": adapter_config(),
                    "adapter_model.bin": b"\x80\x04\x95" + b"\x00" * 64,
                }
            ),
            "adapter",
            422,
            "unsafe_file",
        ),
        (
            "a.zip",
            zip_bytes({"../evil.txt": b"x", "adapter_config.json": adapter_config()}),
            "adapter",
            422,
            "unsafe_file",
        ),
        ("a.tar.gz", tar_bytes({"../../evil.txt": b"x"}), "adapter", 422, "unsafe_file"),
        (
            "bomb.zip",
            zip_bytes(
                {
                    "adapter_config.json": adapter_config(),
                    "adapter_model.safetensors": b"\x00" * (64 << 20),
                }
            ),
            "adapter",
            422,
            "unsafe_file",
        ),
        ("a.zip", b"this is not an archive", "adapter", 422, "invalid_archive"),
        ("weights.bin", b"\x80\x04", "adapter", 422, "invalid_archive"),
        (
            "a.zip",
            zip_bytes({"adapter_model.safetensors": b"\x00" * 16}),
            "adapter",
            422,
            "invalid_adapter",
        ),
        ("bad.csv", b'text,label\n"unterminated,1\nfine,0\n', "dataset", 422, "invalid_dataset"),
        (
            "bad.jsonl",
            b'{"text": "a", "label": 1}\n{not json}\n',
            "dataset",
            422,
            "invalid_dataset",
        ),
        ("empty.csv", b"text,label\n", "dataset", 422, "invalid_dataset"),
        ("data.txt", b"hello", "dataset", 422, "invalid_dataset"),
        ("zero.csv", b"", "dataset", 422, "empty_file"),
        ("x.csv", b"text,label\n", "weights", 422, "invalid_purpose"),
    ],
    ids=[
        "pickle",
        "zip-dotdot",
        "tar-dotdot",
        "zip-bomb",
        "not-archive",
        "bare-bin",
        "no-config",
        "bad-csv",
        "bad-jsonl",
        "empty",
        "txt",
        "zero-bytes",
        "purpose",
    ],
)
def test_bad_uploads_are_refused_and_leave_nothing(
    api, monkeypatch, name, data, purpose, status, code
):
    if name == "bomb.zip":  # 64 MiB of zeros compresses to ~64 KiB
        monkeypatch.setenv("SANITIZER_MAX_EXTRACTED_BYTES", str(8 << 20))
        from jobstore.settings import get_settings

        get_settings.cache_clear()
    body = problem(up(api, name, data, purpose), status, code)
    assert body["detail"]
    store_is_clean(api)


def test_dataset_errors_point_at_rows(api):
    body = problem(
        up(api, "bad.csv", b"text,label\nok text,positive\n,negative\n" + b"x,y\n" * 8, "dataset"),
        422,
        "invalid_dataset",
    )
    assert body["errors"] and all(
        {"file", "line", "column", "message"} <= set(e) for e in body["errors"]
    )
    assert body["errors"][0]["file"] == "bad.csv" and isinstance(body["errors"][0]["line"], int)


def test_oversized_upload_is_refused_while_streaming(api, monkeypatch):
    monkeypatch.setenv("SANITIZER_MAX_DATASET_BYTES", "1000")
    from jobstore.settings import get_settings

    get_settings.cache_clear()
    body = problem(
        up(api, "big.csv", b"text,label\n" + b"word word,1\n" * 500, "dataset"),
        413,
        "file_too_large",
    )
    assert body["limit"] == 1000
    store_is_clean(api)


def test_size_limit_holds_when_the_file_part_comes_before_purpose(api, monkeypatch):
    """The streaming check cannot know the purpose yet; the limit must still apply."""
    monkeypatch.setenv("SANITIZER_MAX_DATASET_BYTES", "1000")
    from jobstore.settings import get_settings

    get_settings.cache_clear()
    data = b"text,label\n" + b"word word,1\n" * 500
    raw = (
        b'--BB\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n\r\n'
        + data
        + b'\r\n--BB\r\nContent-Disposition: form-data; name="purpose"\r\n\r\ndataset'
        + b"\r\n--BB--\r\n"
    )
    r = api.post(
        "/v1/files", content=raw, headers={"content-type": "multipart/form-data; boundary=BB"}
    )
    assert problem(r, 413, "file_too_large")["limit"] == 1000
    store_is_clean(api)


def test_routing_and_form_errors_say_what_to_fix(api):
    assert "/docs" in problem(api.get("/v2/jobs"), 404, "not_found")["hint"]
    body = problem(api.put("/v1/files"), 405, "method_not_allowed")
    assert "PUT" in body["detail"] and "POST" in body["hint"]
    problem(
        up(api, "a.csv", b"text,label\nhello there,1\n", "dataset", task="regression"),
        422,
        "invalid_task",
    )
    problem(up(api, "a.csv", b"x", "dataset", task="t" * 70_000), 422, "field_too_large")
    two = api.post(
        "/v1/files",
        data={"purpose": "dataset"},
        files=[("file", ("a.csv", b"text,label\nhi,1\n")), ("file", ("b.csv", b"x"))],
    )
    problem(two, 422, "too_many_files")
    store_is_clean(api)


def test_upload_needs_multipart_and_a_file(api):
    problem(api.post("/v1/files", json={"purpose": "dataset"}), 415, "unsupported_media_type")
    problem(
        api.post("/v1/files", data={"purpose": "dataset"}, files={"other": ("", b"")}),
        422,
        "missing_file",
    )


# ------------------------------------------------------------------ jobs


def test_job_submit_get_list_filter_paginate(api, assets):
    ds = dataset_id(api, assets)
    r = api.post(
        "/v1/jobs", json=job_body(ds, metadata={"team": "red"}, hyperparameters={"epochs": 1})
    )
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["attempt"] == 1 and job["error"] is None
    assert job["metadata"] == {"team": "red"} and job["hyperparameters"] == {"epochs": 1}
    j2 = api.post("/v1/jobs", json=job_body(ds, metadata={"team": "blue"})).json()
    assert api.get(f"/v1/jobs/{job['id']}").json()["id"] == job["id"]

    page = api.get("/v1/jobs", params={"limit": 1}).json()
    assert (
        [j["id"] for j in page["data"]] == [j2["id"]]
        and page["has_more"]
        and page["last_id"] == j2["id"]
    )
    page = api.get("/v1/jobs", params={"limit": 1, "after": page["last_id"]}).json()
    assert [j["id"] for j in page["data"]] == [job["id"]] and not page["has_more"]
    red = api.get("/v1/jobs", params={"metadata[team]": "red"}).json()["data"]
    assert [j["id"] for j in red] == [job["id"]]
    assert len(api.get("/v1/jobs", params={"status": "queued"}).json()["data"]) == 2
    assert api.get("/v1/jobs", params={"status": "running"}).json()["data"] == []
    problem(api.get("/v1/jobs", params={"status": "bogus"}), 422, "invalid_status")

    events = api.get(f"/v1/jobs/{job['id']}/events").json()
    assert events["data"][0]["message"] == "job accepted and queued"
    assert 'sanitizer_jobs{status="queued"} 2.0' in api.get("/metrics").text


def test_idempotency_key(api, assets):
    ds = dataset_id(api, assets)
    h = {"Idempotency-Key": "k-1"}
    a = api.post("/v1/jobs", json=job_body(ds), headers=h)
    b = api.post("/v1/jobs", json=job_body(ds), headers=h)
    assert a.status_code == b.status_code == 202 and a.json()["id"] == b.json()["id"]
    assert b.headers["idempotent-replayed"] == "true"
    problem(
        api.post("/v1/jobs", json=job_body(ds, seed=1), headers=h), 422, "idempotency_key_reused"
    )
    assert len(api.get("/v1/jobs").json()["data"]) == 1
    # another project may use the same key for its own job
    other = {"Authorization": f"Bearer {api.key_b}"}
    ds_b = api.post(
        "/v1/files",
        data={"purpose": "dataset"},
        files={"file": ("c.csv", Path(assets["clean"]).read_bytes())},
        headers=other,
    ).json()["id"]
    c = api.post("/v1/jobs", json=job_body(ds_b), headers={**h, **other})
    assert c.status_code == 202 and c.json()["id"] != a.json()["id"]


def test_job_input_errors(api, assets):
    ds = dataset_id(api, assets)
    body = problem(api.post("/v1/jobs", json=job_body(ds, method="magic")), 422, "unknown_method")
    assert "w2sdefense" in body["hint"]
    body = problem(
        api.post("/v1/jobs", json=job_body(ds, base_model="nobody/nothing")), 422, "unknown_model"
    )
    assert body["field"] == "base_model" and "tiny/bert" in body["detail"]
    # a folder on the server's disk is not a model id, even when it holds a model
    store_folder = assets["store"] / "tiny--bert"
    body = problem(
        api.post("/v1/jobs", json=job_body(ds, base_model=str(store_folder))), 422, "unknown_model"
    )
    assert body["field"] == "base_model" and "not a valid model id" in body["detail"]
    # a setting that cannot apply to the job's task is refused at submission, not minutes in
    hp = {"teacher_model": "tiny/teacher", "universal_radius": 0.1, "universal_target": "refusal"}
    body = problem(
        api.post("/v1/jobs", json=job_body(ds, method="w2sdefense", hyperparameters=hp)),
        422,
        "invalid_config",
    )
    assert body["field"] == "hyperparameters" and "generation jobs" in body["detail"]
    problem(api.post("/v1/jobs", json=job_body("file_missing")), 404, "file_not_found")
    other_ad = up(api, "o.zip", assets["other_adapter"].read_bytes(), "adapter").json()["id"]
    body = problem(
        api.post("/v1/jobs", json=job_body(ds, adapter_file=other_ad)), 422, "adapter_mismatch"
    )
    assert "tiny/other" in body["detail"]
    body = problem(api.post("/v1/jobs", json=job_body(other_ad)), 422, "wrong_file_purpose")
    assert body["field"] == "clean_dataset_file"
    body = problem(api.post("/v1/jobs", json={"method": "crow"}), 422, "validation_error")
    locs = {tuple(e["loc"]) for e in body["errors"]}
    assert ("body", "base_model") in locs and ("body", "clean_dataset_file") in locs
    body = problem(api.post("/v1/jobs", json=job_body(ds, epochs=3)), 422, "validation_error")
    assert body["errors"][0]["loc"] == ["body", "epochs"]
    body = problem(
        api.post("/v1/jobs", json=job_body(ds, evaluation={"attack": {"name": "nope"}})),
        422,
        "validation_error",
    )
    problem(
        api.post("/v1/jobs", json=job_body(ds, webhook_url="not a url")), 422, "validation_error"
    )
    problem(
        api.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}),
        422,
        "validation_error",
    )
    # a classification dataset used for generation is re-validated for that task
    problem(api.post("/v1/jobs", json=job_body(ds, task="generation")), 422, "invalid_dataset")
    assert api.get("/v1/jobs").json()["data"] == []


def test_bad_hyperparameters_are_refused_at_submit(api, assets):
    """The method's config is validated by the API (torch-free), not left to fail the job."""
    ds = dataset_id(api, assets)
    body = problem(
        api.post(
            "/v1/jobs",
            json=job_body(
                ds,
                method="w2sdefense",
                hyperparameters={"epochs": 0, "learning_rate": -1, "lr": 2e-4},
            ),
        ),
        422,
        "invalid_config",
    )
    assert body["field"] == "hyperparameters"
    for name in ("epochs", "learning_rate", "lr"):
        assert name in body["detail"]
    assert {tuple(e["loc"]) for e in body["errors"]} == {
        ("body", "hyperparameters", "epochs"),
        ("body", "hyperparameters", "learning_rate"),
        ("body", "hyperparameters", "lr"),
    }
    assert "teacher_model" in body["hint"] and "learning_rate" in body["hint"]  # allowed fields
    body = problem(
        api.post("/v1/jobs", json=job_body(ds, method="crow", hyperparameters={"alpha": "big"})),
        422,
        "invalid_config",
    )
    assert "alpha" in body["detail"]
    body = problem(
        api.post(
            "/v1/jobs",
            json=job_body(
                ds, method="w2sdefense", hyperparameters={"teacher_model": "nobody/teacher"}
            ),
        ),
        422,
        "unknown_model",
    )
    assert body["field"] == "hyperparameters.teacher_model"
    body = problem(
        api.post("/v1/jobs", json=job_body(ds, evaluation={"attack": {"name": "ctba"}})),
        422,
        "invalid_attack",
    )
    assert "badnet" in body["hint"]
    body = problem(
        api.post(
            "/v1/jobs",
            json=job_body(
                ds,
                evaluation={"attack": {"name": "badnet"}, "extra_attacks": [{"name": "vpi"}]},
            ),
        ),
        422,
        "invalid_attack",
    )
    assert body["field"] == "evaluation.extra_attacks.0.name"
    r = api.post("/v1/jobs", json=job_body(ds, evaluation={"comparators": ["prune", "int3"]}))
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    assert "comparators" in r.text and "int4" in r.text, r.text  # names the field and the choices
    assert api.get("/v1/jobs").json()["data"] == []  # nothing was queued
    ok = api.post(
        "/v1/jobs",
        json=job_body(
            ds,
            method="w2sdefense",
            hyperparameters={"epochs": 1, "teacher_model": "tiny/teacher", "lambda_fa": 0.01},
        ),
    )
    assert ok.status_code == 202, ok.text


def test_cancel_events_report_artifact_and_tenancy(api, assets):
    ds = dataset_id(api, assets)
    job = api.post("/v1/jobs", json=job_body(ds)).json()
    jid = job["id"]
    for path in (
        f"/v1/jobs/{jid}/report",
        f"/v1/jobs/{jid}/report.html",
        f"/v1/jobs/{jid}/artifacts/adapter",
    ):
        body = problem(
            api.get(path),
            409,
            path.rsplit("/", 1)[-1].replace("report.html", "report").replace("adapter", "artifact")
            + "_not_ready",
        )
        assert body["status_now"] == "queued"
    other = {"Authorization": f"Bearer {api.key_b}"}
    for method, path in (
        ("GET", ""),
        ("POST", "/cancel"),
        ("GET", "/events"),
        ("GET", "/report"),
        ("GET", "/report.html"),
        ("GET", "/artifacts/adapter"),
    ):
        problem(api.request(method, f"/v1/jobs/{jid}{path}", headers=other), 404, "job_not_found")
    r = api.post(f"/v1/jobs/{jid}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    body = problem(api.post(f"/v1/jobs/{jid}/cancel"), 409, "job_finished")
    assert body["status_now"] == "cancelled"
    msgs = [e["message"] for e in api.get(f"/v1/jobs/{jid}/events").json()["data"]]
    assert msgs[-1] == "cancelled before a worker started it"
    page = api.get(f"/v1/jobs/{jid}/events", params={"limit": 1}).json()
    assert page["has_more"] and len(page["data"]) == 1
    rest = api.get(f"/v1/jobs/{jid}/events", params={"after": page["last_id"]}).json()["data"]
    assert [e["message"] for e in rest] == msgs[1:]
    problem(api.get(f"/v1/jobs/{jid}/events", params={"after": "x"}), 422, "invalid_cursor")
    problem(api.get("/v1/jobs/job_nope"), 404, "job_not_found")
    assert api.delete(f"/v1/files/{ds}").status_code == 204  # the job is finished


def test_file_in_use_cannot_be_deleted(api, assets):
    ds = dataset_id(api, assets)
    api.post("/v1/jobs", json=job_body(ds))
    problem(api.delete(f"/v1/files/{ds}"), 409, "file_in_use")


def test_finished_job_serves_report_html_and_artifact(api, assets):
    """A succeeded job written directly to the store (the worker path is tested end to end)."""
    from jobstore import status as st
    from jobstore.artifacts import get_store
    from jobstore.db import session_scope
    from jobstore.models import Job

    ds = dataset_id(api, assets)
    jid = api.post("/v1/jobs", json=job_body(ds)).json()["id"]
    report = json.loads((REPO / "tests/client/data/report_classification.json").read_text())
    store = get_store()
    store.put_bytes(f"jobs/{jid}/report.json", json.dumps(report).encode())
    sha = store.put_bytes(f"jobs/{jid}/adapter.zip", zip_bytes({"manifest.json": b'{"files": {}}'}))
    with session_scope() as s:
        job = s.get(Job, jid)
        st.transition(job, st.RUNNING)
        st.transition(job, st.SUCCEEDED)
        job.artifact_sha256 = sha
    j = api.get(f"/v1/jobs/{jid}").json()
    assert j["artifacts"]["adapter"] == {"url": f"/v1/jobs/{jid}/artifacts/adapter", "sha256": sha}
    assert api.get(f"/v1/jobs/{jid}/report").json() == report
    r = api.get(f"/v1/jobs/{jid}/artifacts/adapter")
    assert r.status_code == 200 and r.headers["x-content-sha256"] == sha
    assert hashlib.sha256(r.content).hexdigest() == sha
    assert int(r.headers["content-length"]) == len(r.content)
    assert f'filename="{jid}-adapter.zip"' in r.headers["content-disposition"]
    r = api.get(f"/v1/jobs/{jid}/report.html")
    assert r.status_code == 200 and r.text.lstrip().lower().startswith("<!doctype html")
    assert jid in r.text  # the served page names its job


def finished_job_with_adapter(api, assets, payload: bytes) -> tuple[str, str]:
    """A succeeded job whose adapter.zip is ``payload``, written directly to the store."""
    from jobstore import status as st
    from jobstore.artifacts import get_store
    from jobstore.db import session_scope
    from jobstore.models import Job

    jid = api.post("/v1/jobs", json=job_body(dataset_id(api, assets))).json()["id"]
    sha = get_store().put_bytes(f"jobs/{jid}/adapter.zip", payload)
    with session_scope() as s:
        job = s.get(Job, jid)
        st.transition(job, st.RUNNING)
        st.transition(job, st.SUCCEEDED)
        job.artifact_sha256 = sha
    return jid, sha


def test_adapter_download_serves_byte_ranges(api, assets):
    """Issue 25 item 3: a broken download resumes with Range (206 + Content-Range)."""
    payload = bytes(range(256)) * 40
    jid, sha = finished_job_with_adapter(api, assets, payload)
    url = f"/v1/jobs/{jid}/artifacts/adapter"
    whole = api.get(url)
    assert whole.status_code == 200 and whole.content == payload
    assert whole.headers["accept-ranges"] == "bytes" and whole.headers["etag"] == f'"{sha}"'
    part = api.get(url, headers={"Range": "bytes=1000-"})
    assert part.status_code == 206 and part.content == payload[1000:]
    assert part.headers["content-range"] == f"bytes 1000-{len(payload) - 1}/{len(payload)}"
    assert int(part.headers["content-length"]) == len(payload) - 1000
    assert part.headers["x-content-sha256"] == sha  # of the whole archive
    mid = api.get(url, headers={"Range": "bytes=10-19"})
    assert mid.status_code == 206 and mid.content == payload[10:20]
    tail = api.get(url, headers={"Range": "bytes=-7"})
    assert tail.status_code == 206 and tail.content == payload[-7:]
    same = api.get(url, headers={"Range": "bytes=5-", "If-Range": f'"{sha}"'})
    assert same.status_code == 206 and same.content == payload[5:]
    # an If-Range naming another version, several ranges, a malformed header: the whole body
    for headers in (
        {"Range": "bytes=5-", "If-Range": '"0000"'},
        {"Range": "bytes=0-1,5-6"},
        {"Range": "bytes=abc"},
        {"Range": "items=0-1"},
    ):
        r = api.get(url, headers=headers)
        assert r.status_code == 200 and r.content == payload, headers
    body = problem(
        api.get(url, headers={"Range": f"bytes={len(payload)}-"}), 416, "range_not_satisfiable"
    )
    assert "bytes=N-" in body["hint"]


@pytest.mark.parametrize(
    ("policy", "passed"),
    [({"max_asr": 0.05, "max_ca_drop": 0.02}, True), ({"max_asr": 0.01}, False)],
)
def test_a_job_policy_puts_the_verdict_in_the_report(api, assets, policy, passed):
    """Issue 26 item 7: the service's report page said only 'Check the measurement'."""

    ds = dataset_id(api, assets)
    created = api.post("/v1/jobs", json=job_body(ds, policy=policy)).json()
    jid = created["id"]
    assert created["policy"] == {"max_asr": None, "max_ca_drop": None, **policy}
    finish_with_sample_report(jid)
    verdict = api.get(f"/v1/jobs/{jid}/report").json()["verdict"]
    assert verdict["passed"] is passed
    assert bool(verdict["reasons"]) is not passed  # a failure says why (ASR 2.3% > 1.0%)
    page = api.get(f"/v1/jobs/{jid}/report.html").text
    assert f'data-passed="{str(passed).lower()}"' in page
    assert ("PASSED" if passed else "FAILED") + " the release policy" in page


def test_a_policy_out_of_range_is_refused(api, assets):
    ds = dataset_id(api, assets)
    body = problem(
        api.post("/v1/jobs", json=job_body(ds, policy={"max_asr": 5})), 422, "validation_error"
    )
    assert body["errors"][0]["loc"] == ["body", "policy", "max_asr"]


class ProtocolOnlyStore:
    """Exposes exactly the ArtifactStore protocol (no local paths): what an object-store
    backend would offer. The API must work through it."""

    def __init__(self, inner: Any) -> None:
        from jobstore.artifacts import ArtifactStore

        for name in [n for n in dir(ArtifactStore) if not n.startswith("_")]:
            setattr(self, name, getattr(inner, name))


def test_api_uses_only_the_artifact_store_interface(api, assets):
    from jobstore import status as st
    from jobstore.artifacts import get_store
    from jobstore.db import session_scope
    from jobstore.models import Job

    api.app.dependency_overrides[get_store] = lambda: ProtocolOnlyStore(get_store())
    try:
        assert not hasattr(ProtocolOnlyStore(get_store()), "path")
        rows = "".join(f"good film {i},{i % 2},nice movie {i}\n" for i in range(12))
        ds = up(api, "d.csv", ("text,label,review\n" + rows).encode(), "dataset").json()["id"]
        ad = up(api, "a.zip", assets["adapter"].read_bytes(), "adapter").json()["id"]
        # other columns than at upload: the dataset is re-read through the store at submit
        body = job_body(ds, adapter_file=ad, text_column="review")
        r = api.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        jid = r.json()["id"]
        sha = get_store().put_bytes(f"jobs/{jid}/adapter.zip", b"PK-bytes")
        with session_scope() as s:
            job = s.get(Job, jid)
            st.transition(job, st.RUNNING)
            st.transition(job, st.SUCCEEDED)
            job.artifact_sha256 = sha
        r = api.get(f"/v1/jobs/{jid}/artifacts/adapter")
        assert r.status_code == 200 and r.content == b"PK-bytes"
    finally:
        api.app.dependency_overrides.clear()


def test_a_pipeline_rerun_reuses_its_uploads_and_replays_its_job(api, assets):
    """Issue 26 item 4: each run re-uploaded its inputs, got new ids, and its Idempotency-Key
    then answered 422 idempotency_key_reused."""
    data = assets["clean"].read_bytes()
    first = up(api, "clean.csv", data, "dataset")
    again = up(api, "renamed.csv", data, "dataset")
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"] and again.headers["x-file-reused"] == "true"
    assert len(api.get("/v1/files").json()["data"]) == 1
    h = {"Idempotency-Key": "nightly-42"}
    job = api.post("/v1/jobs", json=job_body(first.json()["id"]), headers=h)
    rerun = api.post("/v1/jobs", json=job_body(again.json()["id"]), headers=h)
    assert rerun.status_code == 202 and rerun.headers["idempotent-replayed"] == "true"
    assert rerun.json()["id"] == job.json()["id"]
    # checked another way, or by another project: a file of its own
    other_task = up(api, "clean.csv", data, "dataset", task="generation")
    assert other_task.status_code in (201, 422)
    b = api.post(
        "/v1/files",
        data={"purpose": "dataset"},
        files={"file": ("clean.csv", data)},
        headers={"Authorization": f"Bearer {api.key_b}"},
    )
    assert b.status_code == 201 and b.json()["id"] != first.json()["id"]


def test_models_and_methods_are_listed_for_clients(api, assets):
    """What a job may name, read before uploading (issue 26 item 10): installed and
    published models, and the methods with their hyperparameter schemas."""
    from jobstore.artifacts import get_store
    from jobstore.model_cache import push_model

    problem(api.get("/v1/models", headers={"Authorization": ""}), 401, "missing_api_key")
    models = api.get("/v1/models").json()
    ids = {m["id"]: m for m in models["data"]}
    assert {"tiny/bert", "tiny/teacher"} <= set(ids) and ids["tiny/bert"]["source"] == "installed"
    assert str(assets["store"]) not in json.dumps(models)  # ids, never server paths
    push_model(get_store(), assets["store"] / "tiny--other", "org/published", "v1")
    again = {(m["id"], m["source"], m["revision"]) for m in api.get("/v1/models").json()["data"]}
    assert ("org/published", "published", "v1") in again
    methods = {m["id"]: m for m in api.get("/v1/methods").json()["data"]}
    assert {"auto", "rebuild", "crow", "w2sdefense", "finetune"} <= set(methods)
    assert methods["rebuild"]["needs_trusted_base"] is True
    assert "epochs" in methods["crow"]["hyperparameters"]["properties"]


def test_rebuild_of_full_weights_needs_the_base_it_was_fine_tuned_from(api, assets):
    """rebuild on a model given as full weights (no adapter): refused with the fix named, unless
    the job names the trusted base (``trusted_base``), which must be a model the service has."""
    ds = dataset_id(api, assets)
    body = problem(api.post("/v1/jobs", json=job_body(ds, method="rebuild")), 422, "invalid_config")
    assert body["field"] == "method" and "trusted_base=<model id>" in body["hint"]
    hp = {"trusted_base": "nobody/nothing"}
    body = problem(
        api.post("/v1/jobs", json=job_body(ds, method="rebuild", hyperparameters=hp)),
        422,
        "unknown_model",
    )
    assert body["field"] == "hyperparameters.trusted_base"
    hp = {"trusted_base": "tiny/bert"}
    ok = api.post("/v1/jobs", json=job_body(ds, method="rebuild", hyperparameters=hp))
    assert ok.status_code == 202, ok.text


def test_auto_settings_are_checked_against_the_method_auto_will_choose(api, assets):
    """An adapter job with method=auto runs rebuild, which has no use for unlearn_first: refused
    at submission with the reason, not minutes later in the worker; with a method named, the
    stage is accepted."""
    ds = dataset_id(api, assets)
    ad = up(api, "a.zip", assets["adapter"].read_bytes(), "adapter").json()["id"]
    hp = {"unlearn_first": True}
    body = problem(
        api.post("/v1/jobs", json=job_body(ds, method="auto", adapter_file=ad, hyperparameters=hp)),
        422,
        "invalid_config",
    )
    assert "unlearn_first" in body["detail"]
    ok = api.post("/v1/jobs", json=job_body(ds, method="crow", adapter_file=ad, hyperparameters=hp))
    assert ok.status_code == 202, ok.text
    # rebuild's own settings: taken by auto when it will run rebuild (an adapter, or the base
    # named), refused with the setting named when the worker chooses (full weights)
    hp = {"scan_first": True}
    ok = api.post("/v1/jobs", json=job_body(ds, method="auto", adapter_file=ad, hyperparameters=hp))
    assert ok.status_code == 202, ok.text
    body = problem(
        api.post("/v1/jobs", json=job_body(ds, method="auto", hyperparameters=hp)),
        422,
        "invalid_config",
    )
    assert "scan_first" in body["detail"]
    hp = {"scan_first": True, "trusted_base": "tiny/bert"}
    ok = api.post("/v1/jobs", json=job_body(ds, method="auto", hyperparameters=hp))
    assert ok.status_code == 202, ok.text


def test_unlabeled_texts_are_a_file_a_rebuild_job_can_name(api, assets):
    """purpose=unlabeled: texts without labels, checked on upload (every bad row named); a
    classification rebuild (or auto) job may name one, any other job is refused with the fix,
    and the file cannot be deleted while the job that reads it runs."""
    texts = "text\n" + "".join(f"an unlabeled review number {i}\n" for i in range(12))
    f = up(api, "texts.csv", texts.encode(), "unlabeled")
    assert f.status_code == 201, f.text
    assert f.json()["purpose"] == "unlabeled" and f.json()["details"]["rows"] == 12
    again = up(api, "texts.csv", texts.encode(), "unlabeled")
    assert again.status_code == 200 and again.json()["id"] == f.json()["id"]
    bad = problem(up(api, "t.csv", b"review\nsome text\n", "unlabeled"), 422, "invalid_dataset")
    assert "'text'" in bad["detail"]
    one_empty = b'{"text": "ok"}\n{"text": ""}\n'
    empty_row = problem(up(api, "t.jsonl", one_empty, "unlabeled"), 422, "invalid_dataset")
    assert "t.jsonl:2" in empty_row["detail"]
    ds = dataset_id(api, assets)
    uid = f.json()["id"]
    hp = {"trusted_base": "tiny/bert"}
    for body in (
        job_body(ds, method="crow", unlabeled_dataset_file=uid),
        job_body(
            ds, method="rebuild", task="generation", unlabeled_dataset_file=uid, hyperparameters=hp
        ),
        job_body(ds, type="scan", method="auto", unlabeled_dataset_file=uid),
    ):
        r = problem(api.post("/v1/jobs", json=body), 422, "invalid_unlabeled_data")
        assert r["field"] == "unlabeled_dataset_file" and "rebuild" in r["hint"]
    rebuild = job_body(ds, method="rebuild", hyperparameters=hp)
    wrong = api.post("/v1/jobs", json={**rebuild, "unlabeled_dataset_file": ds})
    problem(wrong, 422, "wrong_file_purpose")
    ok = api.post("/v1/jobs", json={**rebuild, "unlabeled_dataset_file": uid})
    assert ok.status_code == 202, ok.text
    assert ok.json()["unlabeled_dataset_file"] == uid
    problem(api.delete(f"/v1/files/{uid}"), 409, "file_in_use")
    assert api.get("/v1/files", params={"purpose": "unlabeled"}).json()["data"][0]["id"] == uid
