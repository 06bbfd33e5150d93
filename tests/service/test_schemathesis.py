"""Property-based contract test: schemathesis generates requests from the live API's own
OpenAPI schema (valid and invalid bodies, queries, headers) and checks every answer: no 5xx,
a documented status code, a documented content type, a body matching the documented schema.

Bounded (a few examples per operation, about a minute in all). It found a 500 on a job whose
``extra_attacks[].name`` was an object, and the undocumented text/plain of ``/metrics``."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.service.helpers import Stack

CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
]


@pytest.fixture(scope="module")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A uvicorn API process on SQLite and the serverless broker (no worker is needed: the
    contract is the API's)."""
    root = tmp_path_factory.mktemp("schemathesis")
    env = {
        "SANITIZER_DATA_DIR": str(root / "data"),
        "SANITIZER_MODEL_STORE": str(root / "models"),
        "SANITIZER_QUEUE": f"sanitize-{uuid.uuid4().hex[:8]}",
        "SANITIZER_API_KEY": "sk_keyfuzz0000001_" + uuid.uuid4().hex,
        "DATABASE_URL": "",
        "REDIS_URL": "",
    }
    stack = Stack(env, Path(root / "logs"))
    stack.start_api()
    try:
        yield stack
    finally:
        stack.stop()


def test_api_contract(live_stack: Stack, tmp_path: Path) -> None:
    """schemathesis' own runner (its coverage, fuzzing and stateful phases) against the live
    API, 40 examples per operation; exit 0 means no failure of the checks above."""
    st = Path(sys.executable).parent / "st"
    proc = subprocess.run(
        [
            str(st),
            "run",
            live_stack.url + "/openapi.json",
            "-H",
            f"Authorization: Bearer {live_stack.key}",
            "--checks",
            ",".join(CHECKS),
            "--max-examples",
            "40",
            "--seed",
            "1",
            "--request-timeout",
            "30",
            "--report-dir",
            str(tmp_path / "report"),
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "SCHEMATHESIS_TELEMETRY": "false"},
    )
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:] + live_stack.log_tail()
    assert " passed" in proc.stdout, proc.stdout[-3000:]
