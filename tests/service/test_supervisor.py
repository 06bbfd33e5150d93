"""The embedded worker supervisor (`sanitizer serve`): restart with backoff, give up within a
bound, and readiness that reports a missing worker (issue 23 item 6)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from jobstore.supervisor import WorkerSupervisor, read_status
from tests.service.helpers import process_gone
from tests.service.test_api import problem


def _wait(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_worker_that_dies_is_started_again_and_the_state_is_on_disk(tmp_path: Path) -> None:
    status = tmp_path / "workers.json"
    sup = WorkerSupervisor(
        lambda name: [sys.executable, "-c", "import time; time.sleep(60)"],
        ["w0"],
        status,
        poll=0.1,
    ).start()
    try:
        first = read_status(status)
        assert first is not None and first["alive"] == 1 and first["expected"] == 1
        os.kill(first["pids"][0], signal.SIGKILL)
        _wait(lambda: (read_status(status) or {}).get("restarts") == 1)
        _wait(lambda: (read_status(status) or {}).get("alive") == 1)
        now = read_status(status)
        assert now is not None and now["pids"] != first["pids"] and now["gave_up"] == []
        assert now["last_exit_codes"]["w0"] == [-signal.SIGKILL]
    finally:
        sup.stop(timeout=5)
    assert not status.exists()  # a stopped supervisor leaves no stale state behind


def test_a_worker_that_cannot_start_is_given_up_after_the_bound(tmp_path: Path) -> None:
    status = tmp_path / "workers.json"
    sup = WorkerSupervisor(
        lambda name: [sys.executable, "-c", "raise SystemExit(3)"],
        ["w0"],
        status,
        max_restarts=2,
        poll=0.1,
    ).start()
    try:
        _wait(lambda: (read_status(status) or {}).get("gave_up") == ["w0"], timeout=30)
        final = read_status(status)
        assert final is not None and final["alive"] == 0 and final["restarts"] == 2
        assert final["last_exit_codes"]["w0"] == [3, 3, 3]
    finally:
        sup.stop(timeout=5)


def test_readiness_reports_a_missing_worker(api, tmp_path, monkeypatch) -> None:
    from jobstore.settings import get_settings

    status = tmp_path / "workers.json"
    monkeypatch.setenv("SANITIZER_WORKER_STATUS_FILE", str(status))
    get_settings.cache_clear()
    try:
        status.write_text(json.dumps({"expected": 1, "alive": 1, "gave_up": []}))
        assert api.get("/readyz").json()["checks"]["workers"] == "ok"
        status.write_text(json.dumps({"expected": 1, "alive": 0, "gave_up": []}))
        body = problem(api.get("/readyz"), 503, "not_ready")
        assert body["checks"]["workers"] == "error: 1 of 1 down (restarting)"
        assert "workers down" in body["detail"]
    finally:
        monkeypatch.delenv("SANITIZER_WORKER_STATUS_FILE")
        get_settings.cache_clear()


def test_stopping_reaps_the_workers_children_within_the_bound(tmp_path: Path) -> None:
    """Issue 26 item 10: after SIGTERM to `serve`, the Celery worker's pool child lived on
    under PID 1 for 20 s and more."""
    status = tmp_path / "workers.json"
    child_pid = tmp_path / "child.pid"
    code = (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"  # a worker slow to stop
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(child_pid)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )
    sup = WorkerSupervisor(lambda name: [sys.executable, "-c", code], ["w0"], status).start()
    _wait(lambda: child_pid.exists() and child_pid.read_text().strip() != "")
    worker = (read_status(status) or {})["pids"][0]
    child = int(child_pid.read_text())
    t = time.monotonic()
    sup.stop(timeout=2)
    assert time.monotonic() - t < 10

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    _wait(lambda: gone(worker) and gone(child), timeout=5)


def test_a_worker_does_not_outlive_a_killed_serve(tmp_path: Path) -> None:
    """`serve` killed with SIGKILL runs no cleanup; its workers must still go (they lived on
    under PID 1 after test runs that killed the service)."""
    import subprocess

    if not sys.platform.startswith("linux"):
        return
    status = tmp_path / "workers.json"
    code = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from jobstore.supervisor import WorkerSupervisor\n"
        "WorkerSupervisor(lambda n: [sys.executable, '-c', 'import time; time.sleep(120)'], "
        f"['w0'], Path({str(status)!r})).start()\n"
        "time.sleep(120)\n"
    )
    serve = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[2])
    try:
        _wait(lambda: bool((read_status(status) or {}).get("pids")))
        worker = (read_status(status) or {})["pids"][0]
        assert not process_gone(worker)
        serve.kill()
        serve.wait(timeout=10)
        _wait(lambda: process_gone(worker), timeout=10)
    finally:
        serve.kill()
