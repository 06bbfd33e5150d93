"""`sanitizer submit` / `jobs` / `report` as a pipeline runs them: a real process, real HTTP,
every exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import DATA, free_port
from stub_service import API_KEY


def run(
    *args: str, url: str | None = None, key: str | None = API_KEY, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANITIZER_")}
    env["COLUMNS"] = "200"
    if url:
        env["SANITIZER_URL"] = url
    if key:
        env["SANITIZER_API_KEY"] = key
    return subprocess.run(
        [sys.executable, "-m", "sanitizer_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def submit(url: str, dataset: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run(
        "submit",
        "--method",
        "w2sdefense",
        "--base-model",
        "tiny/bert",
        "--clean-data",
        str(dataset),
        "--poll-interval",
        "0.05",
        *extra,
        url=url,
    )


def test_submit_wait_pass_policy_download_report_exit_0(
    stub: tuple[str, Any], dataset: Path, adapter_dir: Path, tmp_path: Path
) -> None:
    url, state = stub
    out = submit(
        url,
        dataset,
        "--adapter",
        str(adapter_dir),
        "--attack",
        "badnet",
        "--trigger",
        "cf",
        "--target-label",
        "0",
        "--param",
        "epochs=2",
        "--param",
        "teacher_model=tiny/t",
        "--max-asr",
        "0.05",
        "--max-ca-drop",
        "0.01",
        "--download",
        str(tmp_path / "clean"),
        "--report-html",
        str(tmp_path / "r.html"),
        "--json",
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["exit_code"] == 0 and result["policy"]["passed"] is True
    assert result["download"]["verified"] is True
    assert (tmp_path / "clean" / "adapter_model.safetensors").exists()
    assert 'data-passed="true"' in (tmp_path / "r.html").read_text()
    (job,) = state.jobs.values()
    req = job["request"]
    assert req["hyperparameters"] == {"epochs": 2, "teacher_model": "tiny/t"}
    assert req["evaluation"]["attack"] == {"name": "badnet", "trigger": "cf", "target_label": 0}
    assert req["policy"] == {"max_asr": 0.05, "max_ca_drop": 0.01}
    assert state.files[req["adapter_file"]]["purpose"] == "adapter"


def test_human_output_shows_table_and_progress_log(stub: tuple[str, Any], dataset: Path) -> None:
    url, _ = stub
    out = submit(url, dataset, "--wait", "--max-asr", "0.05")
    assert out.returncode == 0, out.stderr
    assert "ASR" in out.stdout and "99.0%" in out.stdout and "2.0%" in out.stdout
    assert "PASSED" in out.stdout
    # not a terminal: progress as log lines (phase, step/total, loss, ETA) on stderr
    assert "defense 1/3 ce=1.0000 ETA 0:02" in out.stderr
    assert "uploaded" in out.stderr


def test_json_mode_still_logs_the_job_and_its_phases_on_stderr(
    stub: tuple[str, Any], dataset: Path
) -> None:
    """Issue 26 item 3: `--wait --json > report.json` was silent for the whole job."""
    url, state = stub
    out = submit(url, dataset, "--wait", "--json")
    assert out.returncode == 0, out.stderr
    (job_id,) = state.jobs
    assert json.loads(out.stdout)["job"]["id"] == job_id  # stdout stays one JSON document
    assert f"job {job_id}" in out.stderr and "defense 1/3" in out.stderr
    quiet = submit(url, dataset, "--wait", "--json", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_submit_names_the_dataset_columns_like_the_api(
    stub: tuple[str, Any], tmp_path: Path
) -> None:
    """Issue 26 item 2: an error told the user to pass --text-column, which submit lacked."""
    url, state = stub
    data = tmp_path / "reviews.csv"
    data.write_text("review,sentiment\ngreat film,positive\ndull film,negative\n")
    out = submit(url, data, "--text-column", "review", "--label-column", "sentiment")
    assert out.returncode == 0, out.stderr
    (job,) = state.jobs.values()
    req = job["request"]
    assert (req["text_column"], req["label_column"]) == ("review", "sentiment")
    fields = state.upload_fields[req["clean_dataset_file"]]
    assert fields == {
        "purpose": "dataset",
        "task": "classification",
        "text_column": "review",
        "label_column": "sentiment",
    }


def test_submit_without_wait_prints_job_id(stub: tuple[str, Any], dataset: Path) -> None:
    url, state = stub
    out = submit(url, dataset)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in state.jobs


@pytest.mark.parametrize(
    ("scenario", "flags", "reason"),
    [
        ("asr_high", ["--max-asr", "0.05"], "ASR after sanitization is 40.0%"),
        ("ca_drop", ["--max-ca-drop", "0.01"], "dropped by 5.0 points"),
    ],
)
def test_policy_failed_exit_1(
    stub: tuple[str, Any], dataset: Path, scenario: str, flags: list[str], reason: str
) -> None:
    url, _ = stub
    out = submit(url, dataset, "--metadata", f"scenario={scenario}", *flags, "--json")
    assert out.returncode == 1, out.stderr
    result = json.loads(out.stdout)
    assert result["policy"]["passed"] is False and reason in result["policy"]["reasons"][0]


@pytest.mark.parametrize("scenario", ["fail", "cancel"])
def test_job_failed_or_cancelled_exit_2(
    stub: tuple[str, Any], dataset: Path, scenario: str
) -> None:
    url, _ = stub
    out = submit(url, dataset, "--metadata", f"scenario={scenario}", "--wait")
    assert out.returncode == 2, out.stderr
    if scenario == "fail":
        assert "failed: [training_diverged] loss became NaN" in out.stderr
    else:
        assert "cancelled" in out.stderr


def test_usage_and_input_errors_exit_3(
    stub: tuple[str, Any], dataset: Path, tmp_path: Path
) -> None:
    url, _ = stub
    assert run("submit", "--method", "w2sdefense", url=url).returncode == 3  # missing options
    assert run("jobs", "frobnicate", url=url).returncode == 3
    missing = submit(url, tmp_path / "nope.csv")
    assert missing.returncode == 3 and "no such file" in missing.stderr
    assert submit(url, dataset, "--param", "noequals").returncode == 3
    # 4xx from the service: unknown method (422), unknown job (404), bad key (401)
    bad = run(
        "submit", "--method", "nope", "--base-model", "m", "--clean-data", str(dataset), url=url
    )
    assert bad.returncode == 3 and "unknown_method" in bad.stderr
    nf = run("jobs", "get", "job_missing", url=url)
    assert nf.returncode == 3 and "job_not_found" in nf.stderr and "request id" in nf.stderr
    assert run("jobs", "list", url=url, key="wrong").returncode == 3
    assert run("report", str(tmp_path / "nope.json")).returncode == 3


def test_service_unreachable_exit_4(dataset: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    out = submit(url, dataset, "--wait")
    assert out.returncode == 4 and "cannot reach" in out.stderr
    assert run("jobs", "list", url=url).returncode == 4


def test_tampered_download_exit_5(stub: tuple[str, Any], dataset: Path, tmp_path: Path) -> None:
    url, state = stub
    state.tamper = "body"
    out = submit(url, dataset, "--download", str(tmp_path / "out"))
    assert out.returncode == 5 and "verification failed" in out.stderr


def test_jobs_commands(stub: tuple[str, Any], dataset: Path, tmp_path: Path) -> None:
    url, state = stub
    jid = submit(url, dataset, "--wait", "--json")
    jid = json.loads(jid.stdout)["job"]["id"]
    other = submit(url, dataset).stdout.strip()

    listed = run("jobs", "list", "--json", url=url)
    assert [j["id"] for j in json.loads(listed.stdout)] == [other, jid]  # newest first
    table = run("jobs", "list", url=url)
    assert jid in table.stdout and "succeeded" in table.stdout
    assert "99.0% → 2.0%" in table.stdout  # issue 26 item 8: ASR before -> after per job

    got = run("jobs", "get", jid, "--json", url=url)
    assert json.loads(got.stdout)["status"] == "succeeded"
    assert "status" in run("jobs", "get", jid, url=url).stdout

    ev = run("jobs", "events", jid, "--json", url=url)
    assert [e["message"] for e in json.loads(ev.stdout)] == [f"step {i}" for i in range(1, 6)]
    assert "step 5" in run("jobs", "events", jid, url=url).stdout

    rep = run(
        "jobs",
        "report",
        jid,
        "--json",
        "--max-asr",
        "0.01",
        "--html",
        str(tmp_path / "j.html"),
        url=url,
    )
    assert rep.returncode == 1  # ASR 2% > 1%
    assert json.loads(rep.stdout)["policy"]["passed"] is False
    assert (tmp_path / "j.html").read_text().count("data:image/png;base64,") >= 2

    assert run("jobs", "cancel", other, url=url).stdout.strip() == f"job {other} cancelled"
    again = run("jobs", "cancel", other, url=url)
    assert again.returncode == 3 and "job_finished" in again.stderr


def test_report_command_renders_json_file(tmp_path: Path) -> None:
    src = tmp_path / "report.json"
    src.write_text((DATA / "report_classification.json").read_text())
    out = run("report", str(src), "--max-asr", "0.05", "--max-ca-drop", "0.02")
    assert out.returncode == 0, out.stderr
    assert 'data-passed="true"' in (tmp_path / "report.html").read_text()
    fail = run("report", str(src), "-o", str(tmp_path / "x.html"), "--max-ca-drop", "0.01")
    assert fail.returncode == 1


def test_client_commands_do_not_import_torch() -> None:
    code = (
        "import sys, sanitizer_cli.client_commands, sanitizer_client, sanitizer.report_html;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_job_submitted_without_wait_is_finished_later(
    stub: tuple[str, Any], dataset: Path, tmp_path: Path
) -> None:
    """Issue 26 item 8: `jobs wait` and `jobs download` finish what `submit` started."""
    url, _ = stub
    job_id = submit(url, dataset).stdout.strip()
    out = run(
        "jobs", "wait", job_id, "--poll-interval", "0.05", "--max-asr", "0.05", "--json", url=url
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["job"]["id"] == job_id and result["policy"]["passed"] is True
    assert "defense" in out.stderr  # the phases, on stderr
    strict = run("jobs", "wait", job_id, "--max-asr", "0.001", url=url)
    assert strict.returncode == 1 and "FAILED" in strict.stdout
    got = run("jobs", "download", job_id, "--out", str(tmp_path / "ad"), "--json", url=url)
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["verified"] is True
    assert (tmp_path / "ad" / "adapter_model.safetensors").is_file()
    assert run("jobs", "wait", "job_nope", url=url).returncode == 3


@pytest.mark.parametrize(("scenario", "code"), [("scan_backdoor", 1), ("scan_clean", 0)])
def test_fail_on_detection_gates_on_the_scan(
    stub: tuple[str, Any], dataset: Path, scenario: str, code: int
) -> None:
    """Issue 22 item 3: a pipeline gates a release on the scan's verdict."""
    url, state = stub
    out = submit(url, dataset, "--metadata", f"scenario={scenario}", "--fail-on-detection")
    assert out.returncode == code, out.stderr
    assert ("BACKDOOR DETECTED" in out.stdout) is (code == 1)
    (job,) = state.jobs.values()
    assert job["request"]["evaluation"]["scan"] is True  # a scan was asked of the sanitize job
    scan_job = submit(url, dataset, "--type", "scan", "--metadata", f"scenario={scenario}",
                      "--fail-on-detection", "--json")  # fmt: skip
    assert scan_job.returncode == code
    assert json.loads(scan_job.stdout)["scan"]["verdict"] == scenario.split("_")[1]
    req = [j for j in state.jobs.values() if j["request"].get("type") == "scan"]
    assert len(req) == 1


def test_version_and_shell_completion_are_offered() -> None:
    """Issue 26 item 10."""
    out = run("--version", key=None)
    assert (
        out.returncode == 0
        and out.stdout.startswith("sanitizer ")
        and out.stdout.strip()[-1].isdigit()
    )
    assert "--install-completion" in run("--help", key=None).stdout
