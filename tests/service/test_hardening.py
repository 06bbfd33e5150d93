"""Holes a red-team run found (issue 23), each a test that failed before its fix."""

from __future__ import annotations

import time
from typing import Any

import pytest

from jobstore.webhook_targets import WebhookTargetError, check_url, pinned_request_args
from tests.service.test_api import dataset_id, job_body, problem, store_is_clean, up


def test_a_huge_integer_label_is_refused_quickly_and_nothing_is_kept(api):
    data = ("text,label\n" + "good movie,0\n" * 10 + "bad movie,1000000000\n" * 10).encode()
    t = time.monotonic()
    body = problem(up(api, "l.csv", data, "dataset"), 422, "invalid_dataset")
    assert time.monotonic() - t < 5, "must not build a label list from the largest id"
    assert "out of range" in body["detail"] + str(body.get("errors"))
    assert len(str(body)) < 20_000, "the error must not list a billion label names"
    store_is_clean(api)


def test_labels_up_to_the_class_cap_still_load(api):
    data = ("text,label\n" + "".join(f"row {i},{i % 7}\n" for i in range(40))).encode()
    r = up(api, "ok.csv", data, "dataset")
    assert r.status_code == 201, r.text
    assert len(r.json()["details"]["label_names"]) == 7


HOSTILE_HOOKS = [
    "http://169.254.169.254/latest/meta-data/",
    "http://127.0.0.1:6379/",
    "http://[::1]:8000/hook",
    "http://2130706433/hook",  # 127.0.0.1 as one integer
    "http://localhost:8000/hook",
    "http://user:pass@example.com/hook",
    "http://10.0.0.5/hook",
    "http://[::ffff:127.0.0.1]/hook",
]


@pytest.mark.parametrize("url", HOSTILE_HOOKS)
def test_webhooks_to_internal_targets_are_refused_at_submission(api, assets, monkeypatch, url):
    from jobstore.settings import get_settings

    monkeypatch.setenv("SANITIZER_WEBHOOK_ALLOW_HOSTS", "")  # the operator allowed nothing
    get_settings.cache_clear()
    ds = dataset_id(api, assets)
    body = problem(
        api.post("/v1/jobs", json=job_body(ds, webhook_url=url)), 422, "invalid_webhook_url"
    )
    assert body["field"] == "webhook_url"
    assert api.get("/v1/jobs").json()["data"] == []  # no job was created


def test_an_allowed_internal_host_is_accepted(api, assets):
    ds = dataset_id(api, assets)  # the suite allows 127.0.0.1 (its own receiver)
    r = api.post("/v1/jobs", json=job_body(ds, webhook_url="http://127.0.0.1:9/hook"))
    assert r.status_code == 202, r.text


def _resolver(answers: list[list[str]]) -> Any:
    """Answers one list of addresses per call, in order: a DNS rebind in two calls."""
    calls = iter(answers)
    return lambda host, port: next(calls)


def test_a_dns_rebind_between_submission_and_delivery_is_refused():
    resolve = _resolver([["93.184.215.14"], ["127.0.0.1"]])
    url = "https://hooks.example.com/x"
    check_url(url, resolver=resolve)  # submission: public
    with pytest.raises(WebhookTargetError, match="loopback"):
        check_url(url, resolver=resolve)  # delivery: the name now points inside


def test_delivery_connects_to_the_address_it_checked():
    target = check_url(
        "https://hooks.example.com:8443/x?y=1", resolver=_resolver([["93.184.215.14"]])
    )
    args = pinned_request_args(target)
    assert args["url"] == "https://93.184.215.14:8443/x?y=1"
    assert args["headers"]["host"] == "hooks.example.com:8443"
    assert args["extensions"]["sni_hostname"] == "hooks.example.com"


def test_one_private_address_among_public_ones_is_refused():
    with pytest.raises(WebhookTargetError):
        check_url("http://mixed.example/x", resolver=_resolver([["93.184.215.14", "10.1.2.3"]]))
    assert check_url(
        "http://mixed.example/x",
        ["10.0.0.0/8"],
        resolver=_resolver([["93.184.215.14", "10.1.2.3"]]),
    )


def test_a_target_label_the_dataset_cannot_have_is_refused_at_submission(api, assets):
    ds = dataset_id(api, assets)
    ev = {"attack": {"name": "badnet", "target_label": 1_000_000_000}}
    body = problem(api.post("/v1/jobs", json=job_body(ds, evaluation=ev)), 422, "invalid_attack")
    assert body["field"] == "evaluation.attack.target_label" and "labels" in body["detail"]
    ok = {"attack": {"name": "badnet", "target_label": 1}}
    assert api.post("/v1/jobs", json=job_body(ds, evaluation=ok)).status_code == 202


@pytest.mark.parametrize("seed", [10**30, -1, 2**32])
def test_a_seed_out_of_range_is_refused_at_submission(api, assets, seed):
    ds = dataset_id(api, assets)
    body = problem(api.post("/v1/jobs", json=job_body(ds, seed=seed)), 422, "validation_error")
    assert body["errors"][0]["loc"] == ["body", "seed"]


def test_a_pinned_delivery_reaches_the_checked_address_with_the_original_host():
    import http.server
    import threading

    import httpx

    seen: dict[str, str] = {}

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            seen["host"] = self.headers["host"]
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    try:
        target = check_url(
            f"http://hooks.internal:{port}/x", ["127.0.0.1"], resolver=_resolver([["127.0.0.1"]])
        )
        args = pinned_request_args(target)
        with httpx.Client() as c:
            r = c.post(
                args["url"], content=b"{}", headers=args["headers"], extensions=args["extensions"]
            )
        assert r.status_code == 204 and seen["host"] == f"hooks.internal:{port}"
    finally:
        srv.shutdown()


def test_a_target_label_may_be_given_by_name_and_is_stored_as_its_id(api, assets):
    """Issue 26 item 1: the README's `--target-label negative` reached the API as a name."""
    rows = "".join(
        f"film {i} was {'great' if i % 2 else 'dull'},{'positive' if i % 2 else 'negative'}\n"
        for i in range(30)
    )
    r = up(api, "named.csv", ("text,label\n" + rows).encode(), "dataset")
    assert r.status_code == 201, r.text
    names = r.json()["details"]["label_names"]
    ds = r.json()["id"]
    ev = {"attack": {"name": "badnet", "target_label": "positive"}}
    created = api.post("/v1/jobs", json=job_body(ds, evaluation=ev))
    assert created.status_code == 202, created.text
    stored = api.get(f"/v1/jobs/{created.json()['id']}").json()["evaluation"]["attack"]
    assert stored["target_label"] == names.index("positive") == 1 - names.index("negative")
    bad = {"attack": {"name": "badnet", "target_label": "neutral"}}
    body = problem(api.post("/v1/jobs", json=job_body(ds, evaluation=bad)), 422, "invalid_attack")
    assert body["field"] == "evaluation.attack.target_label"
    assert (
        "'neutral'" in body["detail"]
        and "negative" in body["detail"]
        and "positive" in body["detail"]
    )


def _zip(entries: list[tuple[str, bytes | None]]) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries:
            if data is None:
                zf.writestr(zipfile.ZipInfo(name + "/"), b"")
            else:
                zf.writestr(name, data)
    return buf.getvalue()


def _tar(entries: list[tuple[str, bytes | None]]) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


CONFIG = b'{"peft_type": "LORA"}'
ODD_ARCHIVES = {
    "file-then-folder": [("x", b"1"), ("x/y", b"2"), ("adapter_config.json", CONFIG)],
    "folder-then-file": [("x/y", b"2"), ("x", b"1"), ("adapter_config.json", CONFIG)],
    "dir-entry-then-file": [("x", None), ("x", b"1")],
    "300-char name": [("a" * 300 + ".json", b"{}"), ("adapter_config.json", CONFIG)],
}


@pytest.mark.parametrize("kind", ["zip", "tar"])
@pytest.mark.parametrize("case", list(ODD_ARCHIVES))
def test_odd_archives_are_refused_with_a_problem_not_a_500(api, kind, case):
    data = (_zip if kind == "zip" else _tar)(ODD_ARCHIVES[case])
    r = up(api, f"a.{kind}", data, "adapter")
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    store_is_clean(api)


def test_a_deeply_nested_jsonl_line_is_a_row_problem(api):
    deep = "[" * 100_000 + "]" * 100_000
    data = ('{"text": "ok", "label": 0}\n' + '{"text": ' + deep + ', "label": 1}\n').encode()
    body = problem(up(api, "deep.jsonl", data, "dataset"), 422, "invalid_dataset")
    assert "nested too deeply" in str(body)


@pytest.mark.parametrize("after", ["99999999999999999999", "²", "١٢", "-1", "1e3"])
def test_an_event_cursor_that_is_not_an_id_is_a_422(api, assets, after):
    ds = dataset_id(api, assets)
    job = api.post("/v1/jobs", json=job_body(ds)).json()
    body = problem(
        api.get(f"/v1/jobs/{job['id']}/events", params={"after": after}), 422, "invalid_cursor"
    )
    assert "event id" in body["detail"]
    # the connection is still usable (a 500 used to drop the keep-alive)
    assert api.get(f"/v1/jobs/{job['id']}/events").status_code == 200


def test_a_huge_json_body_is_refused_before_it_is_read(api, assets):
    ds = dataset_id(api, assets)
    big = job_body(ds, metadata={"blob": "x" * 20_000_000})
    body = problem(api.post("/v1/jobs", json=big), 413, "body_too_large")
    assert "POST /v1/files" in body["hint"]
    assert api.get("/v1/jobs").json()["data"] == []


@pytest.mark.parametrize(
    "metadata", [{"k": "v" * 513}, {"k" * 65: "v"}, {"": "v"}, {f"k{i}": "v" for i in range(17)}]
)
def test_metadata_is_bounded_like_the_openai_api(api, assets, metadata):
    ds = dataset_id(api, assets)
    r = api.post("/v1/jobs", json=job_body(ds, metadata=metadata))
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem")
    assert api.get("/v1/jobs").json()["data"] == []
    ok = {"k" * 64: "v" * 512}
    assert api.post("/v1/jobs", json=job_body(ds, metadata=ok)).status_code == 202


def _retarget(zip_bytes_in: bytes, base: str, rename: tuple[str, str] | None = None) -> bytes:
    """The adapter archive with its config naming ``base`` and, optionally, its tensors'
    module names rewritten (``rename`` = (old, new) substring)."""
    import io
    import json
    import zipfile

    from safetensors.torch import load, save

    src = zipfile.ZipFile(io.BytesIO(zip_bytes_in))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("adapter_config.json"):
                cfg = json.loads(data)
                cfg["base_model_name_or_path"] = base
                data = json.dumps(cfg).encode()
            elif name.endswith(".safetensors") and rename:
                tensors = load(data)
                data = save({k.replace(*rename): v for k, v in tensors.items()})
            zf.writestr(name, data)
    return out.getvalue()


@pytest.mark.parametrize(
    ("source", "rename", "says"),
    [
        ("other_adapter", None, "do not fit"),  # trained on a model of another size
        ("adapter", ("attention.self.query", "attention.self.nowhere"), "does not have"),
    ],
)
def test_an_adapter_that_cannot_sit_on_the_base_model_is_refused_at_submission(
    api, assets, source, rename, says
):
    ds = dataset_id(api, assets)
    data = _retarget(assets[source].read_bytes(), "tiny/bert", rename)
    ad = up(api, "a.zip", data, "adapter").json()["id"]
    body = problem(
        api.post("/v1/jobs", json=job_body(ds, adapter_file=ad)), 422, "adapter_mismatch"
    )
    assert body["field"] == "adapter_file" and says in body["detail"]
    assert api.get("/v1/jobs").json()["data"] == []
    fine = up(api, "b.zip", assets["adapter"].read_bytes(), "adapter").json()["id"]
    assert api.post("/v1/jobs", json=job_body(ds, adapter_file=fine)).status_code == 202


def test_a_405_names_every_method_of_the_path(api):
    r = api.post("/v1/files/file_x")
    body = problem(r, 405, "method_not_allowed")
    assert {m.strip() for m in r.headers["allow"].split(",")} >= {"GET", "DELETE"}
    assert "DELETE" in body["hint"]


def test_the_openapi_document_declares_problem_errors_and_bearer_auth(api):
    doc = api.get("/openapi.json").json()
    assert doc["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert "Problem" in doc["components"]["schemas"]
    ops = [(p, op) for p, item in doc["paths"].items() for op in item.values()]
    for path, op in ops:
        for status in ("4XX", "5XX"):
            assert "application/problem+json" in op["responses"][status]["content"], path
        assert "422" not in op["responses"]  # FastAPI's HTTPValidationError shape is not ours
        assert (op.get("security") == [{"apiKey": []}]) == path.startswith("/v1/"), path


def test_the_docs_page_works_offline(api):
    html = api.get("/docs").text
    assert "swagger-ui" in html
    assert "cdn" not in html.lower() and "https://" not in html
    import re

    for asset in re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', html):
        assert api.get(asset).status_code == 200, asset


def test_concurrent_replays_of_one_key_all_say_replayed(api, assets):
    from concurrent.futures import ThreadPoolExecutor

    ds = dataset_id(api, assets)
    h = {"Idempotency-Key": "race-1"}
    with ThreadPoolExecutor(8) as pool:
        rs = list(pool.map(lambda _: api.post("/v1/jobs", json=job_body(ds), headers=h), range(8)))
    assert all(r.status_code == 202 for r in rs), [r.text for r in rs]
    assert len({r.json()["id"] for r in rs}) == 1
    fresh = [r for r in rs if r.headers.get("idempotent-replayed") != "true"]
    assert len(fresh) == 1, "exactly one request created the job; every other one is a replay"
