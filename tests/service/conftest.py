"""Fixtures: tiny models, an API in-process (TestClient) per test, real Redis/PostgreSQL."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sanitizer.tiny import write_sentiment_csv
from tests.service.helpers import build_adapter_zip


def require_or_skip(reason: str) -> None:
    """Skip a test whose real service is absent; fail instead where the services are a given
    (CI, or SANITIZER_REQUIRE_SERVICES=1), so a green run never hides a skipped end-to-end test."""
    if os.environ.get("CI") or os.environ.get("SANITIZER_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason}; CI requires it (unset CI / SANITIZER_REQUIRE_SERVICES to skip)")
    pytest.skip(reason)


def reset_caches() -> None:
    from app.queue import get_queue
    from jobstore.db import reset_engines
    from jobstore.settings import get_settings

    reset_engines()
    get_settings.cache_clear()
    get_queue.cache_clear()


@pytest.fixture(scope="session")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny models (tiny/bert, tiny/other, tiny/teacher), adapters and datasets."""
    from sanitizer.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("assets")
    store = root / "models"
    build_tiny_model(store, "tiny/bert", "bert")
    build_tiny_model(store, "tiny/other", "bert", hidden_size=16, num_layers=2, seed=3)
    build_tiny_model(store, "tiny/teacher", "bert", hidden_size=16, num_layers=2, seed=1)
    os.environ["SANITIZER_MODEL_STORE"] = str(store)
    return {
        "store": store,
        "adapter": build_adapter_zip(store, "tiny/bert", root / "adapter.zip"),
        "other_adapter": build_adapter_zip(store, "tiny/other", root / "other_adapter.zip"),
        "clean": write_sentiment_csv(root / "clean.csv", 40, 1),
        "test": write_sentiment_csv(root / "test.csv", 24, 2),
    }


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture
def service_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, assets: dict[str, Path]
) -> dict[str, str]:
    """Environment of one isolated service: own data dir, SQLite, embedded broker."""
    for var in (
        "DATABASE_URL",
        "REDIS_URL",
        "SANITIZER_DATABASE_URL",
        "SANITIZER_REDIS_URL",
        "SANITIZER_MODEL_CACHE",  # a worker exports it; never carried from one test to the next
    ):
        monkeypatch.delenv(var, raising=False)
    env = {
        "SANITIZER_DATA_DIR": str(tmp_path / "data"),
        "SANITIZER_MODEL_STORE": str(assets["store"]),
        "SANITIZER_QUEUE": f"sanitize-{uuid.uuid4().hex[:8]}",
        "SANITIZER_WEBHOOKS_QUEUE": f"webhooks-{uuid.uuid4().hex[:8]}",
        "SANITIZER_REAPER_INTERVAL": "1",
        "SANITIZER_HEARTBEAT_INTERVAL": "1",
        "SANITIZER_HEARTBEAT_TIMEOUT": "6",
        "SANITIZER_PROGRESS_INTERVAL": "0.2",
        "SANITIZER_WEBHOOK_BACKOFF": "0.5",
        "SANITIZER_AUTH_CACHE_SECONDS": "1",  # a revoked key stops working within 1 s
        "SANITIZER_WEBHOOK_ALLOW_HOSTS": "127.0.0.1",  # the tests' own webhook receiver
        "SANITIZER_API_KEY": "sk_keytest0000001_" + uuid.uuid4().hex,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reset_caches()
    yield env
    reset_caches()


@pytest.fixture
def api(service_env: dict[str, str]) -> Iterator[Any]:
    """The app in-process (TestClient), with keys for two projects: ``a`` and ``b``."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from jobstore.db import session_scope
    from jobstore.keys import create_key

    with TestClient(create_app()) as client:
        with session_scope() as s:
            _, key_a = create_key(s, "project-a")
            rec_b, key_b = create_key(s, "project-b")
        client.headers["Authorization"] = f"Bearer {key_a}"
        client.key_a, client.key_b, client.key_b_id = key_a, key_b, rec_b.id  # type: ignore[attr-defined]
        client.data_dir = Path(service_env["SANITIZER_DATA_DIR"])  # type: ignore[attr-defined]
        yield client


@pytest.fixture(scope="session")
def redis_base() -> str:
    if not _tcp_open("127.0.0.1", 6379):
        require_or_skip("Redis is not reachable on 127.0.0.1:6379 (start redis-server)")
    return "redis://127.0.0.1:6379"


@pytest.fixture
def redis_url(redis_base: str) -> str:
    """A Redis database number of its own (1-15), so parallel sessions do not collide;
    queue names are unique per test as well."""
    db = 1 + (os.getpid() + uuid.uuid4().int) % 15
    return f"{redis_base}/{db}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    if not _tcp_open("127.0.0.1", 5432):
        require_or_skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    import psycopg

    name = f"sanitizer_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    from jobstore.db import reset_engines

    reset_engines()
    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class S3Server:
    """moto's standalone S3 server (from PyPI) on a loopback port, in its own process."""

    def __init__(self) -> None:
        import socket as _s

        with _s.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: Any = None

    def start(self) -> None:
        import subprocess
        import sys
        import time

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while not _tcp_open("127.0.0.1", self.port):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the moto S3 server did not start")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def create_bucket(self, name: str) -> None:
        import boto3

        boto3.client("s3", endpoint_url=self.url, **_creds()).create_bucket(Bucket=name)


def _creds() -> dict[str, str]:
    return {
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
        "region_name": "us-east-1",
    }


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Server]:
    """A real S3 API server on loopback (moto, a dev dependency: always there in CI), with a
    bucket 'sanitizer' and the AWS variables of this process pointing at it."""
    try:
        import moto  # noqa: F401
    except ImportError:
        require_or_skip("moto[server] is not installed (pip install -e '.[dev]')")
    server = S3Server()
    server.start()
    server.create_bucket("sanitizer")
    for k, v in server.env().items():
        monkeypatch.setenv(k, v)
    from jobstore.artifacts import _s3_store

    _s3_store.cache_clear()
    yield server
    server.stop()
    _s3_store.cache_clear()
