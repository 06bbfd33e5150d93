"""The Docker files, checked without a Docker engine."""

from __future__ import annotations

import re

import yaml

from tests.service.helpers import REPO


def test_compose_services_commands_env_and_gpu():
    doc = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    svc = doc["services"]
    assert set(svc) == {"redis", "postgres", "minio", "minio-bucket", "api", "worker"}
    for name in svc:
        assert "healthcheck" in svc[name] or name in ("worker", "minio-bucket")
    for name in ("api", "worker"):
        env = svc[name]["environment"]
        assert env["REDIS_URL"].startswith("redis://redis:6379")
        assert (
            env["DATABASE_URL"].startswith("postgresql://")
            and "@postgres:5432/" in env["DATABASE_URL"]
        )
        # issue 25: blobs go through the S3-compatible store; no volume is shared for them
        assert env["SANITIZER_ARTIFACTS_URL"].startswith("s3://")
        assert env["AWS_ENDPOINT_URL"] == "http://minio:9000"
        assert not any("artifacts" in v for v in svc[name]["volumes"])
        assert svc[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert svc["api"]["build"]["target"] == "api" and svc["worker"]["build"]["target"] == "worker"
    assert "sanitizer db upgrade" in " ".join(svc["api"]["command"]) and "app.main:app" in " ".join(
        svc["api"]["command"]
    )
    assert svc["worker"]["command"][:2] == ["sanitizer", "worker"]
    dev = svc["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert dev["driver"] == "nvidia" and "gpu" in dev["capabilities"]
    assert {"redis-data", "pg-data", "minio-data"} <= set(doc["volumes"])
    worker_volumes = [v.split(":")[0] for v in svc["worker"]["volumes"]]
    assert worker_volumes == ["models"]  # a worker host shares nothing with the API's host


def test_dockerfile_targets():
    text = (REPO / "Dockerfile").read_text()
    stages = dict(re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, re.M)[i][::-1] for i in range(2))
    assert set(stages) == {"api", "worker"}
    assert "cuda" in stages["worker"]
    assert "uvicorn app.main:app" in text and 'CMD ["sanitizer", "worker"' in text
