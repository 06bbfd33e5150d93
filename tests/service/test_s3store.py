"""The S3-compatible artifact store (issue 25) against a real S3 API server (moto) on loopback:
the protocol's behaviour, integrity checked at read, an outage ridden out, and an API and a
worker with separate data dirs that share nothing but the store, the database and the broker."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import pytest

from jobstore.s3store import IntegrityError, S3ArtifactStore
from tests.service.test_e2e import stack  # noqa: F401  (the real-process fixture)


def test_the_store_keeps_and_returns_blobs_with_their_hashes(s3, tmp_path: Path) -> None:
    store = S3ArtifactStore("s3://sanitizer/svc")
    src = tmp_path / "a.bin"
    src.write_bytes(b"x" * 300_000)
    sha = store.put_file("files/f1/a.bin", src)
    assert sha == hashlib.sha256(src.read_bytes()).hexdigest()
    assert store.exists("files/f1/a.bin") and store.size("files/f1/a.bin") == 300_000
    assert store.put_bytes("jobs/j1/report.json", b"{}") == hashlib.sha256(b"{}").hexdigest()
    with store.open("jobs/j1/report.json") as f:
        assert f.read() == b"{}"
    got = store.fetch("files/f1/a.bin", tmp_path / "out" / "a.bin")
    assert got.read_bytes() == src.read_bytes()
    with store.local_copy("files/f1/a.bin") as p:
        assert p.name == "a.bin" and p.read_bytes() == src.read_bytes()
    assert not p.exists()  # the local copy is gone after the block
    # no temporary object is left behind, and nothing outside the prefix was written
    import boto3

    raw = boto3.client("s3", endpoint_url=s3.url)
    keys = {o["Key"] for o in raw.list_objects_v2(Bucket="sanitizer").get("Contents", [])}
    assert keys == {"svc/files/f1/a.bin", "svc/jobs/j1/report.json"}
    store.delete_prefix("files/f1")
    assert not store.exists("files/f1/a.bin") and store.exists("jobs/j1/report.json")
    with pytest.raises(FileNotFoundError):
        store.open("files/f1/a.bin")
    with pytest.raises(ValueError):
        store.put_bytes("../escape", b"")


def test_a_corrupted_object_is_refused_at_read(s3, tmp_path: Path) -> None:
    import boto3

    store = S3ArtifactStore("s3://sanitizer")
    store.put_bytes("files/f2/d.csv", b"text,label\nhello,1\n")
    raw = boto3.client("s3", endpoint_url=s3.url)
    obj = raw.head_object(Bucket="sanitizer", Key="files/f2/d.csv")
    raw.put_object(  # the bytes change behind the store's back; the recorded hash stays
        Bucket="sanitizer", Key="files/f2/d.csv", Body=b"tampered", Metadata=obj["Metadata"]
    )
    with pytest.raises(IntegrityError, match="sha256"):
        store.fetch("files/f2/d.csv", tmp_path / "d.csv")
    assert not (tmp_path / "d.csv").exists() and not (tmp_path / "d.csv.part").exists()
    with pytest.raises(IntegrityError), store.open("files/f2/d.csv") as f:
        f.read()


def test_an_upload_rides_out_a_store_outage(s3, tmp_path: Path) -> None:
    """The store goes away for ~4 s while a worker uploads: retried with backoff, stored once,
    and served whole."""
    store = S3ArtifactStore("s3://sanitizer", retry_seconds=60)
    src = tmp_path / "adapter.zip"
    src.write_bytes(b"z" * 100_000)
    s3.stop()

    def come_back() -> None:
        time.sleep(4)
        s3.start()  # an in-memory server: it comes back empty, so the bucket is made again
        s3.create_bucket("sanitizer")

    t = threading.Thread(target=come_back)
    t.start()
    start = time.monotonic()
    sha = store.put_file("jobs/j9/adapter.zip", src)
    t.join()
    assert time.monotonic() - start >= 3.5  # it waited for the store, it did not fail
    assert (
        store.fetch("jobs/j9/adapter.zip", tmp_path / "back.zip").read_bytes() == src.read_bytes()
    )
    assert sha == hashlib.sha256(src.read_bytes()).hexdigest()


@pytest.mark.integration
@pytest.mark.timeout(600)
def test_api_and_worker_share_no_disk(stack, assets, redis_url, pg_url, s3, tmp_path) -> None:  # noqa: F811
    """Upload, job, download, sha256 match, with the API and the worker on separate data dirs
    (as on two hosts): everything between them goes through S3, PostgreSQL and Redis."""
    from tests.service.test_e2e import inputs, submit, wait_job

    api_dir, worker_dir = tmp_path / "api-host", tmp_path / "worker-host"
    stack.env.update(
        REDIS_URL=redis_url, DATABASE_URL=pg_url, SANITIZER_ARTIFACTS_URL="s3://sanitizer/prod",
        **s3.env(),
    )  # fmt: skip
    stack.env["SANITIZER_DATA_DIR"] = str(api_dir)
    stack.start_api()
    # the GPU host has no models of its own: tiny/bert is published to the store once and
    # the worker copies it into its model cache
    from jobstore.model_cache import push_model

    push_model(
        S3ArtifactStore("s3://sanitizer/prod"), assets["store"] / "tiny--bert", "tiny/bert", None
    )
    stack.env["SANITIZER_DATA_DIR"] = str(worker_dir)
    stack.env["SANITIZER_MODEL_STORE"] = str(tmp_path / "no-models-here")
    stack.start_worker()
    with stack.client() as c:
        ids = inputs(c, assets)
        job = wait_job(c, submit(c, ids)["id"], 240)
        assert job["status"] == "succeeded", (job["error"], stack.log_tail())
        r = c.get(f"/v1/jobs/{job['id']}/artifacts/adapter")
        assert r.status_code == 200
        sha = hashlib.sha256(r.content).hexdigest()
        assert sha == r.headers["x-content-sha256"] == job["artifacts"]["adapter"]["sha256"]
        assert c.get(f"/v1/jobs/{job['id']}/report").json()["job"]["id"] == job["id"]
    assert (worker_dir / "model-cache" / "tiny--bert@main" / "config.json").is_file()
    # neither host kept a blob of its own: uploads and outputs live in the store only
    for host in (api_dir, worker_dir):
        blobs = [p for p in host.rglob("*") if p.is_file() and "artifacts" in p.parts]
        assert blobs == [], blobs
    import boto3

    raw = boto3.client("s3", endpoint_url=s3.url)
    keys = {o["Key"] for o in raw.list_objects_v2(Bucket="sanitizer").get("Contents", [])}
    assert f"prod/jobs/{job['id']}/adapter.zip" in keys
    assert sum(k.startswith("prod/files/") for k in keys) == 3  # adapter, clean, test


def test_store_ranges_and_presigned_urls(s3, tmp_path: Path) -> None:
    import httpx

    store = S3ArtifactStore("s3://sanitizer/svc")
    data = bytes(range(256)) * 100
    store.put_bytes("jobs/j1/adapter.zip", data)
    with store.open_range("jobs/j1/adapter.zip", 100, 199) as f:
        assert f.read() == data[100:200]
    url = store.presign("jobs/j1/adapter.zip", 60, "j1-adapter.zip")
    assert url is not None and "X-Amz-Signature=" in url
    r = httpx.get(url)  # no credentials: the signature is the permission
    assert r.status_code == 200 and r.content == data
    assert 'filename="j1-adapter.zip"' in r.headers["content-disposition"]
    part = httpx.get(url, headers={"Range": "bytes=1000-"})
    assert part.status_code == 206 and part.content == data[1000:]
    # (moto does not check signatures, so a forged URL is not tested here; S3 refuses it)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_downloads_redirect_to_presigned_urls_after_the_tenant_check(
    stack,  # noqa: F811
    assets,
    s3,
    tmp_path,
    monkeypatch,
) -> None:
    """SANITIZER_DOWNLOAD_REDIRECT: the live API answers the owner with a 307 to a pre-signed
    URL on the S3 server, the SDK follows it and verifies the archive, and another project
    gets a 404 and no URL."""
    import httpx

    from jobstore import status as st
    from jobstore.artifacts import get_store
    from jobstore.db import session_scope
    from jobstore.keys import create_key
    from jobstore.models import Job
    from sanitizer_client import Client
    from sanitizer_client.errors import NotFoundError
    from tests.client.stub_service import adapter_archive
    from tests.service.conftest import reset_caches
    from tests.service.test_e2e import inputs, submit

    env = {"SANITIZER_ARTIFACTS_URL": "s3://sanitizer/redir", "SANITIZER_DOWNLOAD_REDIRECT": "1"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reset_caches()
    stack.env.update(env, **s3.env())
    stack.start_api()
    with stack.client() as c:
        jid = submit(c, inputs(c, assets))["id"]
    payload = adapter_archive({"adapter_model.safetensors": b"w" * 50_000})
    sha = get_store().put_bytes(f"jobs/{jid}/adapter.zip", payload)
    with session_scope() as s:
        job = s.get(Job, jid)
        st.transition(job, st.RUNNING)
        st.transition(job, st.SUCCEEDED)
        job.artifact_sha256 = sha
        _, other_key = create_key(s, "project-other")

    url = f"{stack.url}/v1/jobs/{jid}/artifacts/adapter"
    r = httpx.get(url, headers={"Authorization": f"Bearer {stack.key}"})
    assert r.status_code == 307, r.text
    location = r.headers["location"]
    assert location.startswith(s3.url) and "X-Amz-Expires=300" in location
    assert r.headers["x-content-sha256"] == sha and r.headers["cache-control"] == "no-store"
    assert hashlib.sha256(httpx.get(location).content).hexdigest() == sha

    with Client(stack.url, stack.key) as c:
        got = c.jobs.download_adapter(jid, tmp_path / "a.zip")
    assert got.verified and got.archive_sha256 == sha

    denied = httpx.get(url, headers={"Authorization": f"Bearer {other_key}"})
    assert denied.status_code == 404 and "location" not in denied.headers
    assert denied.json()["code"] == "job_not_found"
    with Client(stack.url, other_key) as c, pytest.raises(NotFoundError):
        c.jobs.download_adapter(jid, tmp_path / "b.zip")
