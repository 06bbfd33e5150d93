"""Fixtures for the client tests: real HTTP servers (uvicorn in a thread) and sample reports."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).parent / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(asgi_app: Any) -> Iterator[str]:
    """Run an ASGI app with uvicorn on a free port in a daemon thread; yield its base URL."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(
        asgi_app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def report() -> dict[str, Any]:
    return json.loads((DATA / "report_classification.json").read_text())


@pytest.fixture
def stub() -> Iterator[tuple[str, Any]]:
    """(base_url, state) of a running stand-in service; tests script faults via ``state``."""
    from stub_service import StubState, create_app

    state = StubState()
    with serve_in_thread(create_app(state)) as url:
        yield url, state


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    p = tmp_path / "clean.jsonl"
    p.write_text(
        "".join(json.dumps({"text": f"row {i}", "label": i % 2}) + "\n" for i in range(20))
    )
    return p


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Path:
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (d / "adapter_model.safetensors").write_bytes(b"\x00" * 4096)
    return d
