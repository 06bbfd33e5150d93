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
    stack.env["SANITIZER_DATA_DIR"] = str(worker_dir)
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
    # neither host kept a blob of its own: uploads and outputs live in the store only
    for host in (api_dir, worker_dir):
        blobs = [p for p in host.rglob("*") if p.is_file() and "artifacts" in p.parts]
        assert blobs == [], blobs
    import boto3

    raw = boto3.client("s3", endpoint_url=s3.url)
    keys = {o["Key"] for o in raw.list_objects_v2(Bucket="sanitizer").get("Contents", [])}
    assert f"prod/jobs/{job['id']}/adapter.zip" in keys
    assert sum(k.startswith("prod/files/") for k in keys) == 3  # adapter, clean, test
