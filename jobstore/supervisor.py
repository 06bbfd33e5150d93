"""Keeps the worker processes that `sanitizer serve` starts beside the API alive.

A thread polls each process; one that exits is started again after a backoff that doubles
(1 s, 2 s, 4 s ... up to ``max_backoff``). More than ``max_restarts`` restarts within
``window`` seconds for one slot means the worker cannot run here (a broken install, a
missing GPU driver): the slot gives up and stays down, and readiness says so.

The state is written to a small JSON file (``status_file``) after every change, so the API
process (uvicorn in the same process, or any other reading the same data dir) can report it
on ``/readyz`` without talking to the workers. Torch-free and API-free.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("sanitizer.supervisor")

STATUS_ENV = "SANITIZER_WORKER_STATUS_FILE"


@dataclass
class _Slot:
    name: str
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)  # monotonic times of restarts
    started_at: float = 0.0
    down_since: float | None = None
    next_start: float = 0.0
    backoff: float = 1.0
    gave_up: bool = False
    exit_codes: list[int] = field(default_factory=list)


class WorkerSupervisor:
    def __init__(
        self,
        argv: Callable[[str], Sequence[str]],
        names: Sequence[str],
        status_file: Path,
        *,
        env: dict[str, str] | None = None,
        max_restarts: int = 5,
        window: float = 600.0,
        max_backoff: float = 60.0,
        poll: float = 0.5,
    ) -> None:
        self.argv, self.env, self.status_file = argv, env, Path(status_file)
        self.max_restarts, self.window, self.max_backoff, self.poll = (
            max_restarts,
            window,
            max_backoff,
            poll,
        )
        self.slots = [_Slot(n) for n in names]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> WorkerSupervisor:
        for slot in self.slots:
            self._spawn(slot)
        self._write()
        self._thread = threading.Thread(target=self._run, name="worker-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every worker (Celery finishes or requeues its job), SIGKILL after
        ``timeout``; the supervisor no longer restarts anything."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        procs = [s.proc for s in self.slots if s.proc is not None]
        for p in procs:
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker pid %s did not stop in %.0f s; killing it", p.pid, timeout)
        for p in procs:  # whatever is left of each group (the pool's children) goes now
            _signal_group(p, signal.SIGKILL)
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.status_file.unlink(missing_ok=True)

    # ------------------------------------------------------------------ state
    def status(self) -> dict[str, Any]:
        with self._lock:
            alive = [s for s in self.slots if s.proc is not None and s.proc.poll() is None]
            return {
                "expected": len(self.slots),
                "alive": len(alive),
                "pids": [s.proc.pid for s in alive if s.proc is not None],
                "restarts": sum(len(s.restarts) for s in self.slots),
                "gave_up": [s.name for s in self.slots if s.gave_up],
                "last_exit_codes": {s.name: s.exit_codes[-3:] for s in self.slots if s.exit_codes},
                "supervisor_pid": os.getpid(),
                "updated_at": time.time(),
            }

    def _write(self) -> None:
        tmp = self.status_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status()))
        os.replace(tmp, self.status_file)  # readers never see half a file

    # ------------------------------------------------------------------ loop
    def _spawn(self, slot: _Slot) -> None:
        with self._lock:
            # a process group of its own: stop() reaches the worker's children too (Celery's
            # pool processes), which would otherwise outlive it under PID 1
            slot.proc = subprocess.Popen(
                list(self.argv(slot.name)),
                env=self.env,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
            slot.started_at = time.monotonic()
        log.info("worker %s started (pid %s)", slot.name, slot.proc.pid)

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            if any([self._check(slot, time.monotonic()) for slot in self.slots]):
                self._write()

    def _check(self, slot: _Slot, now: float) -> bool:
        """One look at one slot; True when its state changed."""
        if slot.gave_up or slot.proc is None:
            return False
        if slot.down_since is None:
            code = slot.proc.poll()
            if code is None:
                if now - slot.started_at > self.window:
                    slot.backoff = 1.0  # it ran a whole window: the next exit starts afresh
                return False
            slot.exit_codes.append(code)
            slot.restarts = [t for t in slot.restarts if now - t < self.window]
            if len(slot.restarts) >= self.max_restarts:
                slot.gave_up = True
                log.error(
                    "worker %s exited %d times within %.0f s; not restarting it (its log is above)",
                    slot.name,
                    len(slot.restarts) + 1,
                    self.window,
                )
                return True
            slot.down_since, slot.next_start = now, now + slot.backoff
            log.warning(
                "worker %s exited with %s; restarting in %.0f s", slot.name, code, slot.backoff
            )
            slot.backoff = min(self.max_backoff, slot.backoff * 2)
            return True
        if now < slot.next_start:
            return False
        slot.restarts.append(now)
        slot.down_since = None
        self._spawn(slot)
        return True


def _die_with_parent() -> None:
    """Run in the worker before exec (Linux): SIGTERM it when the process that started it dies,
    so a `serve` killed with SIGKILL (no ``stop()``) leaves no worker behind under PID 1; the
    worker's own shutdown then stops its pool. Best effort: without prctl nothing changes."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the group leader's pid is the group id
    except (ProcessLookupError, PermissionError):
        pass


def read_status(path: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The supervisor's last written state, or None when there is none to read."""
    if not path:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
