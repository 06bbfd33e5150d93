"""Client commands: `submit`; `report` (JSON -> HTML) is in report_cmd.py, `jobs ...` in
jobs_commands.py, the helpers they share in client_common.py.

They talk to a running service through ``sanitizer_client`` and never import torch.

Exit codes (a CI pipeline gates on them):

    0  the job succeeded and passed the policy (--max-asr / --max-ca-drop), or no policy
    1  the job succeeded but failed the policy, or (--fail-on-detection) the model scans as
       backdoored
    2  the job failed or was cancelled
    3  usage or input error: bad flags, missing file, any 4xx from the service
    4  the service is unreachable (connection refused/timed out, 5xx after retries)
    5  the downloaded adapter failed verification (sha256 header or manifest mismatch)

People get rich tables and a live progress bar (on stderr); ``--json`` prints one JSON
document on stdout for machines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from sanitizer_cli import report_cmd
from sanitizer_cli.client_common import (
    EXIT_JOB,
    EXIT_OK,
    EXIT_POLICY,
    EXIT_USAGE,
    ApiKey,
    JsonOut,
    MaxAsr,
    MaxCaDrop,
    ProgressView,
    Timeout,
    Url,
    _attack_dict,
    _check_names,
    _client,
    _Command,
    _die,
    _handle_errors,
    _parse_params,
    _policy,
    _print_json,
    _scan_line,
    _summary_table,
)

# ------------------------------------------------------------------ submit


def submit(
    base_model: Annotated[str, typer.Option("--base-model", help="HF model id (org/name)")],
    clean_data: Annotated[
        Path, typer.Option("--clean-data", help="clean dataset file (CSV/JSONL)")
    ],
    job_type: Annotated[
        str,
        typer.Option(
            "--type",
            help="sanitize (default): remove a backdoor; scan: look for one and report a "
            "verdict (classification; no adapter is written)",
        ),
    ] = "sanitize",
    fail_on_detection: Annotated[
        bool,
        typer.Option(
            "--fail-on-detection",
            help="exit 1 when the model scans as backdoored: the scanned model (--type scan) "
            "or the sanitized one (a scan is added to a sanitize job); implies --wait",
        ),
    ] = False,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="auto | rebuild | unlearn | w2sdefense | crow | beear | finetune (the service "
            "lists them at /docs); auto chooses per input kind",
        ),
    ] = "auto",
    adapter: Annotated[
        Path | None,
        typer.Option("--adapter", help="PEFT adapter: a folder (zipped on the fly) or an archive"),
    ] = None,
    base_revision: Annotated[str | None, typer.Option("--base-revision")] = None,
    task: Annotated[str, typer.Option("--task", help="classification | generation")] = (
        "classification"
    ),
    test_data: Annotated[
        Path | None,
        typer.Option("--test-data", "--eval", help="test dataset used to measure ASR/CA"),
    ] = None,
    unlabeled_data: Annotated[
        Path | None,
        typer.Option(
            "--unlabeled-data",
            help="rebuild, classification: unlabeled in-domain texts (CSV/JSONL with the text "
            "column; labels ignored) the uploaded model's answers are distilled on too",
        ),
    ] = None,
    text_column: Annotated[
        str, typer.Option("--text-column", help="CSV/JSONL column holding the text")
    ] = "text",
    label_column: Annotated[
        str, typer.Option("--label-column", help="CSV/JSONL column holding the label")
    ] = "label",
    attack: Annotated[
        str | None, typer.Option("--attack", help="attack to measure ASR with (e.g. badnet)")
    ] = None,
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline",
            help="also run plain fine-tuning from the same start; the report shows it beside "
            "the defense (about twice the job time)",
        ),
    ] = False,
    comparator: Annotated[
        list[str] | None,
        typer.Option(
            "--comparator",
            help="also measure a zero-training comparator on the uploaded model: prune, int8 "
            "or int4 (repeatable); the report shows it beside the defense",
        ),
    ] = None,
    trigger: Annotated[str | None, typer.Option("--trigger", help="trigger word/sentence")] = None,
    target_label: Annotated[
        str | None, typer.Option("--target-label", help="label the backdoor forces")
    ] = None,
    target: Annotated[
        str | None, typer.Option("--target", help="generation target: refusal|sentiment|code|url")
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="hyperparameter key=value (repeatable; JSON values)"),
    ] = None,
    metadata: Annotated[
        list[str] | None, typer.Option("--metadata", "-m", help="job metadata key=value")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="block until the job is done")] = False,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="give up waiting after this many seconds")
    ] = None,
    poll_interval: Annotated[float, typer.Option("--poll-interval")] = 2.0,
    max_asr: MaxAsr = None,
    max_ca_drop: MaxCaDrop = None,
    download: Annotated[
        Path | None,
        typer.Option("--download", help="download + verify the sanitized adapter into DIR"),
    ] = None,
    report_html: Annotated[
        Path | None, typer.Option("--report-html", help="write the HTML report to FILE")
    ] = None,
    json_out: JsonOut = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress output")] = False,
    url: Url = None,
    api_key: ApiKey = None,
    http_timeout: Timeout = 60.0,
) -> None:
    """Upload inputs, start a sanitization job and (with --wait) gate on its result.

    --max-asr, --max-ca-drop, --download and --report-html imply --wait.
    Exit codes: 0 passed, 1 policy failed, 2 job failed/cancelled, 3 usage/input error,
    4 service unreachable, 5 download verification failed.
    """
    from rich.console import Console

    from sanitizer_client import Job

    err = Console(stderr=True, highlight=False)
    for flag, path in (
        ("--clean-data", clean_data),
        ("--test-data", test_data),
        ("--unlabeled-data", unlabeled_data),
        ("--adapter", adapter),
    ):
        if path is not None and not path.exists():
            _die(EXIT_USAGE, f"{flag} {path}: no such file or directory")
    if clean_data.is_dir():
        _die(EXIT_USAGE, f"--clean-data {clean_data} is a directory; give a CSV/JSONL file")
    hyperparameters = _parse_params(param)
    meta = {k: str(v) for k, v in _parse_params(metadata).items()}
    attack_spec = _attack_dict(attack, trigger, target_label, target)
    policy = _policy(max_asr, max_ca_drop)
    wait = (
        wait
        or not policy.is_empty()
        or download is not None
        or report_html is not None
        or fail_on_detection
    )
    if job_type not in ("sanitize", "scan"):
        _die(EXIT_USAGE, f"--type must be sanitize or scan, got '{job_type}'")
    if job_type == "scan" and (download is not None or not policy.is_empty()):
        _die(EXIT_USAGE, "a scan job writes no adapter and measures no ASR: drop --download, "
             "--max-asr and --max-ca-drop, or use --fail-on-detection")  # fmt: skip
    # progress goes to stderr, so it is shown with --json too (a CI log sees the job id and the
    # phases, and stdout stays one JSON document); --quiet is the only silence
    say = (lambda m: None) if quiet else (lambda m: err.print(m, markup=False))

    result: dict[str, Any] = {}
    with _handle_errors(), _client(url, api_key, http_timeout) as client:
        _check_names(client, base_model, method if job_type == "sanitize" else None,
                     hyperparameters)  # fmt: skip
        files = {}
        for name, path, purpose in (
            ("adapter_file", adapter, "adapter"),
            ("clean_dataset_file", clean_data, "dataset"),
            ("test_dataset_file", test_data, "dataset"),
            ("unlabeled_dataset_file", unlabeled_data, "unlabeled"),
        ):
            if path is not None:
                columns: dict[str, str] = {
                    "dataset": {
                        "task": task,
                        "text_column": text_column,
                        "label_column": label_column,
                    },
                    "unlabeled": {"text_column": text_column},
                }.get(purpose, {})
                f = client.files.upload(path, purpose=purpose, **columns)
                say(f"uploaded {path} → {f.id} (sha256 {f.sha256[:12]}…, verified)")
                files[name] = f.id
        job: Job = client.jobs.create(
            method=method,
            base_model=base_model,
            base_revision=base_revision,
            task=task,
            attack=attack_spec,
            evaluation=(
                {
                    "baseline": baseline,
                    "comparators": comparator or [],
                    "scan": fail_on_detection and job_type == "sanitize",
                }
                if baseline or comparator or (fail_on_detection and job_type == "sanitize")
                else None
            ),
            type=job_type if job_type != "sanitize" else None,
            hyperparameters=hyperparameters or None,
            metadata=meta or None,
            # the service checks its report against the same gate (its HTML page's banner)
            policy=None if policy.is_empty() else {"max_asr": max_asr, "max_ca_drop": max_ca_drop},
            **files,
            **{
                k: v
                for k, v, default in (
                    ("text_column", text_column, "text"),
                    ("label_column", label_column, "label"),
                )
                if v != default
            },
        )
        say(f"job {job.id} {job.status}")
        result["job"] = job.raw
        if not wait:
            if json_out:
                _print_json(result)
            else:
                typer.echo(job.id)
            raise typer.Exit(EXIT_OK)

        try:
            with ProgressView(enabled=not quiet) as view:
                job = client.jobs.wait(
                    job.id, timeout=timeout, poll_interval=poll_interval, on_progress=view
                )
        except KeyboardInterrupt:
            _die(
                EXIT_JOB,
                f"interrupted; job {job.id} keeps running (sanitizer jobs cancel {job.id})",
            )
        result["job"] = job.raw
        if not job.succeeded:
            result["exit_code"] = EXIT_JOB
            err_info = job.error or {}
            if json_out:
                _print_json(result)
            _die(
                EXIT_JOB,
                f"job {job.id} {job.status}"
                + (f": [{err_info.get('code')}] {err_info.get('message')}" if err_info else ""),
            )

        report = client.jobs.report(job.id)
        result["metrics"] = report.get("metrics")
        code = EXIT_OK
        verdict = None
        if not policy.is_empty():
            from sanitizer.report_html import check_policy

            verdict = check_policy(report, policy)
            result["policy"] = {"max_asr": max_asr, "max_ca_drop": max_ca_drop, **verdict.to_dict()}
            code = EXIT_OK if verdict.passed else EXIT_POLICY
        scan = report.get("scan") if isinstance(report.get("scan"), dict) else None
        if scan is not None:
            result["scan"] = {k: scan.get(k) for k in ("verdict", "score", "target_name")}
        if fail_on_detection:
            if scan is None:
                _die(
                    EXIT_JOB,
                    f"job {job.id}: the report has no scan (submit with --scan or --type scan)",
                )
            if scan.get("verdict") == "backdoor":
                code = EXIT_POLICY
        if report_html is not None:
            from sanitizer.report_html import render_report_html

            report_html.parent.mkdir(parents=True, exist_ok=True)
            report_html.write_text(render_report_html(report, policy=policy, job=job.raw))
            result["report_html"] = str(report_html)
            say(f"report written to {report_html}")
        if download is not None:
            d = client.jobs.download_adapter(job.id, download, verify=True)
            result["download"] = {
                "path": str(d.path),
                "sha256": d.archive_sha256,
                "verified": d.verified,
                "files": d.files,
            }
            say(
                f"adapter downloaded to {d.path} (sha256 {d.archive_sha256[:12]}…, manifest verified)"
            )
        result["exit_code"] = code
        if json_out:
            _print_json(result)
        else:
            if report.get("metrics"):
                Console().print(_summary_table(report, verdict))
            if scan is not None:
                typer.echo(_scan_line(scan))
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    from sanitizer_cli.jobs_commands import jobs_app

    app.command("submit", cls=_Command)(submit)
    app.command("report", cls=_Command)(report_cmd.report)
    app.add_typer(jobs_app, name="jobs")
