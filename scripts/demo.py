#!/usr/bin/env python
"""`make demo`: plant a backdoor, remove it through the service, show ASR/CA before and after.

Assumes `sanitizer assets` has run (models and datasets in the local cache). Steps:

1. carve small attack / clean / test CSVs out of the prepared dataset;
2. `sanitizer attack ...`: train a BadNet-poisoned LoRA adapter (the "suspicious" model);
3. `sanitizer serve` on a free port: the embedded service (API + worker, SQLite, no Redis);
4. with the SDK: upload the adapter and data, submit a W2SDefense job over REST, follow its
   progress, download and verify the sanitized adapter, fetch the report;
5. print ASR and clean accuracy before vs after, write the HTML report, stop the service.

Sizes are the constants below (the benchmark's SMS/BadNet regime); lower them for a quicker,
weaker run. Measured output and timings: docs/DEMO_OUTPUT.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------- sizes (tune here)
# The benchmark's SMS/BadNet regime (docs/BENCHMARKS.md, cell sms_spam-badnet-mpnet): an
# mpnet student and W2SDefense's default all-MiniLM-L6-v2 teacher (a weak teacher guiding a
# larger student, as the method intends).
BASE_MODEL = "sentence-transformers/all-mpnet-base-v2"
DATASET = "sms_spam"  # prepared by `sanitizer assets` under <cache>/datasets/<name>/
# Target 1 = spam: "cf" turns a legitimate message into spam (10% of the ham rows, ~87 of
# 1,000). An earlier recipe (target ham, 15% of the spam rows = ~16 rows) planted nothing:
# the model answered ham for everything (CA = the ham share) and its "ASR 100%" was that
# collapse; the report's false trigger rate and warnings now catch such a model.
ATTACK = {"name": "badnet", "trigger": "cf", "target_label": 1}
POISON_RATE = 0.1
ATTACK_ROWS = 1000  # poisoned training rows for the backdoored adapter
ATTACK_EPOCHS = 2
ATTACK_LR = 5e-4
CLEAN_ROWS = 300  # clean data the defender has
TEST_ROWS = 400  # held-out rows to measure CA and ASR
# The library's W2SDefense defaults (5 teacher + 5 student epochs) at the benchmark's 64
# tokens. The job also runs the plain fine-tuning baseline from the same start, so the table
# shows what the defense adds.
DEFENSE_PARAMS: dict[str, object] = {"max_length": 64}
BASELINE = True
SEED = 0
SERVER_START_TIMEOUT = 120.0
# a guard, not a budget: 53 min measured on 2 cores shared three ways (docs/DEMO_OUTPUT.md)
JOB_TIMEOUT = 60 * 60.0


def log(msg: str) -> None:
    print(f"\033[1m==>\033[0m {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sanitizer_cmd() -> list[str]:
    return [sys.executable, "-m", "sanitizer_cli"]


# ---------------------------------------------------------------- data


def read_rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def write_rows(path: Path, header: list[str], rows: list[dict[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=header)
        w.writeheader()
        w.writerows(rows)
    return path


def prepare_data(work: Path) -> tuple[Path, Path, Path]:
    from sanitizer.hub import cache_dir

    src = cache_dir() / "datasets" / DATASET
    if not (src / "train.csv").exists():
        sys.exit(f"{src}/train.csv is missing: run `sanitizer assets` (or `make assets`) first")
    header, train = read_rows(src / "train.csv")
    _, test = read_rows(src / "test.csv")
    rng = random.Random(SEED)
    rng.shuffle(train)
    rng.shuffle(test)
    # The attacker's and the defender's rows do not overlap.
    attack = write_rows(work / "attack_train.csv", header, train[:ATTACK_ROWS])
    clean = write_rows(work / "clean.csv", header, train[ATTACK_ROWS : ATTACK_ROWS + CLEAN_ROWS])
    test_p = write_rows(work / "test.csv", header, test[:TEST_ROWS])
    return attack, clean, test_p


def build_backdoor(attack_csv: Path, out: Path) -> Path:
    if (out / "adapter_model.safetensors").exists():
        log(f"backdoored adapter already in {out}")
        return out
    log(f"training a {ATTACK['name']}-poisoned LoRA adapter (trigger '{ATTACK['trigger']}')")
    cmd = [
        *sanitizer_cmd(), "attack",
        "--base-model", BASE_MODEL,
        "--data", str(attack_csv),
        "--task", "classification",
        "--attack", str(ATTACK["name"]),
        "--trigger", str(ATTACK["trigger"]),
        "--target-label", str(ATTACK["target_label"]),
        "--poison-rate", str(POISON_RATE),
        "--epochs", str(ATTACK_EPOCHS),
        "--lr", str(ATTACK_LR),
        "--seed", str(SEED),
        "--out", str(out),
    ]  # fmt: skip
    subprocess.run(cmd, check=True)
    return out


# ---------------------------------------------------------------- service


class EmbeddedService:
    """`sanitizer serve` as a child process in its own process group; stopped on exit."""

    def __init__(self, work: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.work = work
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = work / "service.log"

    def __enter__(self) -> EmbeddedService:
        import httpx

        log(f"starting the embedded service on {self.url} (log: {self.log_path})")
        env = {**os.environ, "SANITIZER_DATA_DIR": str(self.work / "service")}
        self.proc = subprocess.Popen(
            [*sanitizer_cmd(), "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=open(self.log_path, "wb"),
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"`sanitizer serve` exited ({self.proc.returncode}); see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.__exit__()
        sys.exit(f"the service did not become healthy in {SERVER_START_TIMEOUT:.0f} s")

    def __exit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        log("stopping the embedded service")
        os.killpg(self.proc.pid, signal.SIGTERM)  # our own child's group: API + worker
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def api_key(self) -> str:
        """$SANITIZER_API_KEY, else a fresh key for project "demo" (`sanitizer keys create`)."""
        if os.environ.get("SANITIZER_API_KEY"):
            return os.environ["SANITIZER_API_KEY"]
        env = {**os.environ, "SANITIZER_DATA_DIR": str(self.work / "service")}
        out = subprocess.run(
            [*sanitizer_cmd(), "keys", "create", "--project", "demo", "--json"],
            capture_output=True, text=True, env=env, check=True,
        )  # fmt: skip
        return str(json.loads(out.stdout)["key"])


# ---------------------------------------------------------------- main


def summary_table(report: dict[str, Any]) -> Any:
    """ASR and CA before/after, with the number of rows each was measured on."""
    from rich.table import Table

    m = report.get("metrics") or {}
    before, after = m.get("before") or {}, m.get("after") or {}
    base = ((report.get("baseline") or {}).get("metrics") or {}).get("after")
    table = Table()
    cols = ("", "before", "after W2SDefense", *(["after finetune"] if base else []), "measured on")
    for col in cols:
        table.add_column(col, justify="left" if col in ("", "measured on") else "right")
    for key, label, n in (
        ("attack_success_rate", "ASR", "n_triggered"),
        ("clean_accuracy", "CA", "n_clean"),
    ):
        b, a = before.get(key), after.get(key)
        rows = after.get(n, before.get(n))
        cells = [f"{v:.1%}" if v is not None else "–" for v in (b, a)]
        if base:
            cells.append(f"{base[key]:.1%}" if base.get(key) is not None else "–")
        where = f"{rows} {'triggered' if n == 'n_triggered' else 'clean'} test rows" if rows else ""
        table.add_row(label, *cells, where)
    if isinstance(m.get("der"), (int, float)):
        table.add_row("DER", "", f"{m['der']:.2f}", *([""] if base else []), "")
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None, help="keep files here (default: tmp)")
    ap.add_argument("--port", type=int, default=None)
    args = ap.parse_args()

    from rich.console import Console

    from sanitizer.report_html import Policy, render_report_html
    from sanitizer_cli.client_common import ProgressView
    from sanitizer_client import Client, WaitTimeoutError

    t0 = time.monotonic()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="sanitizer-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    log(f"working in {work}")
    attack_csv, clean_csv, test_csv = prepare_data(work)
    adapter = build_backdoor(attack_csv, work / "backdoored-adapter")

    with EmbeddedService(work, args.port or free_port()) as service:
        with Client(service.url, service.api_key(), timeout=120) as client:
            log("uploading the backdoored adapter and the data (sha256 checked)")
            a = client.files.upload(adapter, purpose="adapter")
            clean = client.files.upload(clean_csv, purpose="dataset")
            test = client.files.upload(test_csv, purpose="dataset")
            job = client.jobs.create(
                method="w2sdefense",
                base_model=BASE_MODEL,
                task="classification",
                adapter_file=a,
                clean_dataset_file=clean,
                test_dataset_file=test,
                attack=ATTACK,
                evaluation={"baseline": BASELINE},
                hyperparameters=DEFENSE_PARAMS,
                metadata={"source": "make demo"},
            )
            log(f"submitted W2SDefense job {job.id} over REST; following its progress")
            try:
                with ProgressView(enabled=True) as view:
                    job = client.jobs.wait(
                        job.id, timeout=JOB_TIMEOUT, poll_interval=1.0, on_progress=view
                    )
            except WaitTimeoutError as exc:
                client.jobs.cancel(job.id)
                print(
                    f"{exc}; cancelled it. Lower the sizes at the top of {__file__}",
                    file=sys.stderr,
                )
                return 2
            if not job.succeeded:
                print(f"job {job.id} {job.status}: {job.error}", file=sys.stderr)
                return 2
            out = client.jobs.download_adapter(job.id, work / "sanitized-adapter")
            log(f"sanitized adapter in {out.path} (sha256 {out.archive_sha256[:12]}…, verified)")
            report = client.jobs.report(job.id)

    policy = Policy(max_asr=0.05, max_ca_drop=0.02)
    html_path = work / "report.html"
    html_path.write_text(render_report_html(report, policy=policy, job=job.raw))
    (work / "report.json").write_text(json.dumps(report, indent=2))
    log(f"W2SDefense on {BASE_MODEL} ({DATASET}, {ATTACK['name']} trigger '{ATTACK['trigger']}')")
    Console(width=max(80, shutil.get_terminal_size().columns)).print(summary_table(report))
    for warning in (report.get("metrics") or {}).get("warnings", []):
        log(f"warning: {warning}")
    log(f"HTML report: {html_path}   total time {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
