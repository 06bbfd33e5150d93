"""SDK behaviour over real HTTP (uvicorn in a thread): retries, idempotency, errors, checksums,
waiting with progress, paging; sync and async clients."""

from __future__ import annotations

import asyncio
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port
from stub_service import API_KEY

from sanitizer_client import (
    APIConnectionError,
    AsyncClient,
    AuthenticationError,
    ChecksumMismatchError,
    Client,
    ConflictError,
    NotFoundError,
    RateLimitError,
    ServerError,
    ValidationError,
    WaitTimeoutError,
)


def client(url: str, **kw: Any) -> Client:
    return Client(url, API_KEY, timeout=10, backoff_base=0.05, backoff_max=0.2, **kw)


def _posts(state: Any, path: str) -> list[dict[str, str]]:
    return [h for m, p, h in state.requests if m == "POST" and p == path]


def test_create_retries_429_and_503_honouring_retry_after_with_one_idempotency_key(
    stub: tuple[str, Any], dataset: Path
) -> None:
    url, state = stub
    with client(url) as c:
        f = c.files.upload(dataset, purpose="dataset")
        state.faults[("POST", "/v1/jobs")] = [(429, "1"), (503, "0")]
        t0 = time.monotonic()
        job = c.jobs.create(method="w2sdefense", base_model="tiny/bert", clean_dataset_file=f)
        elapsed = time.monotonic() - t0
    posts = _posts(state, "/v1/jobs")
    assert len(posts) == 3  # two refused, one accepted
    keys = {h["idempotency-key"] for h in posts}
    assert len(keys) == 1  # the same key on every attempt of one call
    assert elapsed >= 1.0  # waited the Retry-After: 1 of the 429
    assert job.status == "queued" and len(state.jobs) == 1


def test_new_call_gets_new_key_and_same_key_returns_same_job(
    stub: tuple[str, Any], dataset: Path
) -> None:
    url, state = stub
    with client(url) as c:
        f = c.files.upload(dataset, purpose="dataset")
        a = c.jobs.create(method="crow", base_model="m", clean_dataset_file=f.id)
        b = c.jobs.create(method="crow", base_model="m", clean_dataset_file=f.id)
        assert a.id != b.id
        c1 = c.jobs.create(
            method="crow", base_model="m", clean_dataset_file=f.id, idempotency_key="k-1"
        )
        c2 = c.jobs.create(
            method="crow", base_model="m", clean_dataset_file=f.id, idempotency_key="k-1"
        )
        assert c1.id == c2.id


def test_gives_up_after_max_retries_with_problem_fields(stub: tuple[str, Any]) -> None:
    url, state = stub
    state.faults[("GET", "/v1/jobs/job_x")] = [(429, "0")] * 5
    with client(url, max_retries=2) as c, pytest.raises(RateLimitError) as ei:
        c.jobs.get("job_x")
    assert len([r for r in state.requests if r[1] == "/v1/jobs/job_x"]) == 3
    e = ei.value
    assert e.status == 429 and e.code == "unavailable" and e.retry_after == 0
    assert e.request_id and e.request_id.startswith("req_")


def test_retry_after_longer_than_allowed_is_not_waited(stub: tuple[str, Any]) -> None:
    url, state = stub
    state.faults[("GET", "/v1/jobs/job_x")] = [(503, "3600")]
    t0 = time.monotonic()
    with client(url, max_retry_after=5) as c, pytest.raises(Exception) as ei:
        c.jobs.get("job_x")
    assert ei.value.status == 503 and time.monotonic() - t0 < 2  # type: ignore[attr-defined]


def test_post_without_idempotency_key_not_retried_on_502(
    stub: tuple[str, Any], dataset: Path
) -> None:
    url, state = stub
    state.faults[("POST", "/v1/files")] = [(502, None)]
    with client(url) as c:
        with pytest.raises(ServerError):
            c.files.upload(dataset, purpose="dataset")
        assert len(_posts(state, "/v1/files")) == 1  # the gateway may have forwarded it
        state.faults[("POST", "/v1/files")] = [(503, "0")]  # 503: not processed -> retried
        assert c.files.upload(dataset, purpose="dataset").sha256
        assert len(_posts(state, "/v1/files")) == 3


def test_get_is_retried_on_500_but_post_without_key_is_not(
    stub: tuple[str, Any], dataset: Path
) -> None:
    url, state = stub
    state.faults[("GET", "/v1/jobs")] = [(500, None), (500, None)]
    with client(url) as c:
        assert list(c.jobs.list()) == []  # two 500s, then the answer
        assert len([r for r in state.requests if r[:2] == ("GET", "/v1/jobs")]) == 3
        state.faults[("POST", "/v1/files")] = [(500, None)]
        with pytest.raises(ServerError):
            c.files.upload(dataset, purpose="dataset")
        assert len(_posts(state, "/v1/files")) == 1


def test_upload_purpose_defaults_from_the_path(
    stub: tuple[str, Any], dataset: Path, adapter_dir: Path
) -> None:
    url, _ = stub
    with client(url) as c:
        assert c.files.upload(dataset).purpose == "dataset"
        assert c.files.upload(adapter_dir).purpose == "adapter"


def test_unreachable_service_raises_connection_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with client(url, max_retries=2) as c, pytest.raises(APIConnectionError) as ei:
        c.jobs.get("job_x")
    assert "cannot reach" in str(ei.value) and time.monotonic() - t0 < 5


def test_typed_errors(stub: tuple[str, Any], dataset: Path) -> None:
    url, _ = stub
    with Client(url, "wrong-key", max_retries=0) as c, pytest.raises(AuthenticationError) as ei:
        c.jobs.get("job_x")
    assert ei.value.code == "invalid_api_key" and ei.value.status == 401
    with client(url) as c:
        with pytest.raises(NotFoundError) as nf:
            c.jobs.get("job_missing")
        assert nf.value.detail == "no job job_missing" and nf.value.title == "Not Found"
        f = c.files.upload(dataset, purpose="dataset")
        with pytest.raises(ValidationError) as ve:
            c.jobs.create(method="nope", base_model="m", clean_dataset_file=f)
        assert ve.value.code == "unknown_method"
        assert ve.value.errors == [{"loc": ["body", "method"], "msg": "w2sdefense|crow|finetune"}]
        assert "body.method" in str(ve.value)
        with pytest.raises(ValidationError):
            c.files.upload(dataset, purpose="weights")


def test_env_configuration(stub: tuple[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = stub
    monkeypatch.setenv("SANITIZER_URL", url)
    monkeypatch.setenv("SANITIZER_API_KEY", API_KEY)
    with Client() as c:
        assert c.base_url == url
        assert list(c.jobs.list()) == []


def test_upload_directory_is_zipped_deterministically_and_checked(
    stub: tuple[str, Any], adapter_dir: Path
) -> None:
    url, state = stub
    with client(url) as c:
        a = c.files.upload(adapter_dir, purpose="adapter")
        b = c.files.upload(adapter_dir, purpose="adapter")
    assert a.sha256 == b.sha256 and a.filename == "adapter.zip"
    with zipfile.ZipFile(__import__("io").BytesIO(state.blobs[a.id])) as zf:
        assert sorted(zf.namelist()) == ["adapter_config.json", "adapter_model.safetensors"]


def test_upload_checksum_mismatch_detected_and_remote_copy_deleted(
    stub: tuple[str, Any], dataset: Path
) -> None:
    url, state = stub
    state.wrong_upload_sha = True
    with client(url) as c, pytest.raises(ChecksumMismatchError):
        c.files.upload(dataset, purpose="dataset")
    assert state.files == {}  # the SDK deleted the corrupt upload
    assert [m for m, p, _ in state.requests if p.startswith("/v1/files/")] == ["DELETE"]


def _finished_job(c: Client, dataset: Path, scenario: str = "pass") -> str:
    f = c.files.upload(dataset, purpose="dataset")
    job = c.jobs.create(
        method="w2sdefense", base_model="m", clean_dataset_file=f, metadata={"scenario": scenario}
    )
    return c.jobs.wait(job.id, poll_interval=0.01).id


def test_download_verified(stub: tuple[str, Any], dataset: Path, tmp_path: Path) -> None:
    url, state = stub
    with client(url) as c:
        jid = _finished_job(c, dataset)
        d = c.jobs.download_adapter(jid, tmp_path / "out")
        assert d.verified and d.manifest is not None
        assert (tmp_path / "out" / "adapter_model.safetensors").read_bytes() == (
            state.adapter_files["adapter_model.safetensors"]
        )
        a = c.jobs.download_adapter(jid, tmp_path / "a" / "adapter.zip")
        assert a.path.is_file() and zipfile.is_zipfile(a.path)


@pytest.mark.parametrize("tamper", ["body", "manifest", "extra_file", "no_header"])
def test_download_tampered_archive_detected(
    stub: tuple[str, Any], dataset: Path, tmp_path: Path, tamper: str
) -> None:
    url, state = stub
    with client(url) as c:
        jid = _finished_job(c, dataset)
        state.tamper = tamper
        out = tmp_path / "out"
        with pytest.raises(ChecksumMismatchError):
            c.jobs.download_adapter(jid, out)
        assert list(out.iterdir()) == []  # nothing extracted, no partial file left
        if tamper == "no_header":  # verify=False is the explicit opt-out
            assert not c.jobs.download_adapter(jid, out, verify=False).verified


def test_wait_calls_progress_and_times_out(stub: tuple[str, Any], dataset: Path) -> None:
    url, _ = stub
    seen: list[tuple[str, int | None, dict[str, float]]] = []
    with client(url) as c:
        f = c.files.upload(dataset, purpose="dataset")
        job = c.jobs.create(method="w2sdefense", base_model="m", clean_dataset_file=f)
        done = c.jobs.wait(
            job.id,
            poll_interval=0.01,
            on_progress=lambda j: seen.append((j.status, j.progress.step, j.progress.losses)),
        )
        assert done.succeeded
        assert [s for _, s, _ in seen[:3]] == [1, 2, 3]
        assert seen[0][2] == {"ce": 1.0} and seen[-1][0] == "succeeded"
        slow = c.jobs.create(method="w2sdefense", base_model="m", clean_dataset_file=f)
        with pytest.raises(WaitTimeoutError) as ei:
            c.jobs.wait(slow.id, timeout=0.0, poll_interval=0.01)
        assert ei.value.job.id == slow.id


def test_list_pages_events_cancel_report(stub: tuple[str, Any], dataset: Path) -> None:
    url, _ = stub
    with client(url) as c:
        f = c.files.upload(dataset, purpose="dataset")
        ids = [
            c.jobs.create(method="crow", base_model="m", clean_dataset_file=f).id for _ in range(5)
        ]
        assert [j.id for j in c.jobs.list(limit=2)] == ids[::-1]  # newest first, 3 pages
        page = c.jobs.list_page(limit=2)
        assert page.has_more and page.next_after == page.data[-1].id == ids[3]
        assert [e.message for e in c.jobs.events(ids[0])] == [f"step {i}" for i in range(1, 6)]
        assert c.jobs.cancel(ids[0]).status == "cancelled"
        with pytest.raises(ConflictError):
            c.jobs.cancel(ids[0])
        with pytest.raises(ConflictError) as ce:
            c.jobs.report(ids[1])
        assert ce.value.code == "report_not_ready" and "poll" in (ce.value.hint or "")
        assert "hint: poll" in str(ce.value)
        jid = _finished_job(c, dataset)
        assert c.jobs.report(jid)["metrics"]["after"]["attack_success_rate"] == 0.02


def test_async_client_same_behaviour(stub: tuple[str, Any], dataset: Path, tmp_path: Path) -> None:
    url, state = stub

    async def main() -> None:
        async with AsyncClient(url, API_KEY, backoff_base=0.05) as c:
            f = await c.files.upload(dataset, purpose="dataset")
            state.faults[("POST", "/v1/jobs")] = [(503, "0"), (429, "0")]
            job = await c.jobs.create(method="w2sdefense", base_model="m", clean_dataset_file=f)
            assert len({h["idempotency-key"] for h in _posts(state, "/v1/jobs")}) == 1
            steps: list[int | None] = []
            done = await c.jobs.wait(
                job.id, poll_interval=0.01, on_progress=lambda j: steps.append(j.progress.step)
            )
            assert done.succeeded and steps[:3] == [1, 2, 3]
            assert [j.id async for j in c.jobs.list(limit=1)] == [job.id]
            d = await c.jobs.download_adapter(job.id, tmp_path / "out")
            assert d.verified
            state.tamper = "body"
            with pytest.raises(ChecksumMismatchError):
                await c.jobs.download_adapter(job.id, tmp_path / "out2")
            with pytest.raises(NotFoundError):
                await c.jobs.get("nope")

    asyncio.run(main())
    assert len(_posts(state, "/v1/jobs")) == 3
