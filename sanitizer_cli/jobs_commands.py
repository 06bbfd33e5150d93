"""`sanitizer jobs list|get|wait|download|cancel|events|report`: a job after it was submitted.

Same exit codes as ``submit`` (see client_commands). Never imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sanitizer_cli.client_common import (
    EXIT_JOB,
    EXIT_OK,
    EXIT_POLICY,
    ApiKey,
    JsonOut,
    MaxAsr,
    MaxCaDrop,
    ProgressView,
    Url,
    _client,
    _Command,
    _die,
    _duration,
    _Group,
    _handle_errors,
    _policy,
    _print_json,
    _summary_table,
)

jobs_app = typer.Typer(
    cls=_Group, help="Inspect and control jobs on the service.", no_args_is_help=True
)


@jobs_app.command("list", cls=_Command)
def jobs_list(
    status: Annotated[str | None, typer.Option("--status", help="filter by status")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="show at most N jobs")] = 20,
    json_out: JsonOut = False,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """List jobs, newest first."""
    import itertools

    from rich.console import Console
    from rich.table import Table

    with _handle_errors(), _client(url, api_key) as client:
        jobs = list(itertools.islice(client.jobs.list(status=status, limit=min(limit, 100)), limit))
        if json_out:
            _print_json([j.raw for j in jobs])
            return
        # before -> after of the succeeded jobs: one report read each
        shown = {j.id: _before_after(client.jobs.report(j.id)) for j in jobs if j.succeeded}
    t = Table(title=f"{len(jobs)} job(s)")
    for col in ("id", "status", "method", "base model", "progress", "ASR", "CA", "created"):
        t.add_column(col)
    for j in jobs:
        p = j.progress
        prog = f"{p.step}/{p.total_steps}" if p.step is not None and p.total_steps else ""
        asr, ca = shown.get(j.id, ("", ""))
        t.add_row(
            j.id,
            _status(j.status),
            j.method or "",
            j.base_model or "",
            prog,
            asr,
            ca,
            j.created_at or "",
        )
    Console().print(t)


def _before_after(report: dict) -> tuple[str, str]:
    """('99.0% → 2.0%', '88.0% → 87.5%') from a report; a scan's verdict in the ASR column."""
    if isinstance(report.get("scan"), dict) and not report.get("metrics"):
        return f"scan: {report['scan'].get('verdict')}", ""
    m = report.get("metrics") or {}
    b, a = m.get("before") or {}, m.get("after") or {}
    ca = "clean_accuracy" if "clean_accuracy" in a else "utility_token_f1"

    def pair(key: str) -> str:
        x, y = b.get(key), a.get(key)
        if not isinstance(y, (int, float)):
            return ""
        left = f"{100 * x:.1f}%" if isinstance(x, (int, float)) else "–"
        return f"{left} → {100 * y:.1f}%"

    return pair("attack_success_rate"), pair(ca)


def _status(s: str) -> str:
    color = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan"}
    return f"[{color[s]}]{s}[/]" if s in color else s


@jobs_app.command("get", cls=_Command)
def jobs_get(
    job_id: Annotated[str, typer.Argument(help="job id")],
    json_out: JsonOut = False,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Show one job: status, progress, timestamps, error."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    with _handle_errors(), _client(url, api_key) as client:
        job = client.jobs.get(job_id)
    if json_out:
        _print_json(job.raw)
        return
    t = Table(show_header=False, title=f"job {job.id}")
    t.add_column("field", style="bold")
    t.add_column("value")
    t.add_row("status", _status(job.status))
    for k in ("method", "base_model"):
        if getattr(job, k):
            t.add_row(k.replace("_", " "), str(getattr(job, k)))
    p = job.progress
    if p.phase or p.step is not None:
        t.add_row("phase", str(p.phase or ""))
        if p.total_steps:
            t.add_row("step", f"{p.step}/{p.total_steps}")
        if p.losses:
            t.add_row("loss", " ".join(f"{k}={v:.4f}" for k, v in p.losses.items()))
        if p.eta_seconds is not None:
            t.add_row("ETA", _duration(p.eta_seconds))
    for k in ("created_at", "started_at", "finished_at"):
        if getattr(job, k):
            t.add_row(k.replace("_", " "), str(getattr(job, k)))
    if job.error:
        t.add_row("error", Text(f"[{job.error.get('code')}] {job.error.get('message')}", "red"))
    if job.metadata:
        t.add_row("metadata", json.dumps(job.metadata))
    Console().print(t)


@jobs_app.command("cancel", cls=_Command)
def jobs_cancel(
    job_id: Annotated[str, typer.Argument(help="job id")],
    json_out: JsonOut = False,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Ask the service to cancel a job (cooperative: it ends as cancelled shortly)."""
    with _handle_errors(), _client(url, api_key) as client:
        job = client.jobs.cancel(job_id)
    if json_out:
        _print_json(job.raw)
    else:
        typer.echo(f"job {job.id} {job.status}")


@jobs_app.command("events", cls=_Command)
def jobs_events(
    job_id: Annotated[str, typer.Argument(help="job id")],
    limit: Annotated[int | None, typer.Option("--limit", "-n", help="at most N events")] = None,
    json_out: JsonOut = False,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """The job's event log: level, message, metrics."""
    import itertools

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    with _handle_errors(), _client(url, api_key) as client:
        events = list(itertools.islice(client.jobs.events(job_id), limit))
    if json_out:
        _print_json([e.raw for e in events])
        return
    t = Table(title=f"events of {job_id}")
    for col in ("time", "level", "message", "metrics"):
        t.add_column(col)
    for e in events:
        metrics = (
            " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in e.metrics.items()
            )
            if isinstance(e.metrics, dict)
            else str(e.metrics)
        )
        level = e.level or ""
        style = {"error": "red", "warning": "yellow"}.get(level.lower(), "")
        t.add_row(e.created_at or "", Text(level, style), Text(e.message or ""), Text(metrics))
    Console().print(t)


@jobs_app.command("report", cls=_Command)
def jobs_report(
    job_id: Annotated[str, typer.Argument(help="job id")],
    html: Annotated[
        Path | None, typer.Option("--html", help="write the HTML report to FILE")
    ] = None,
    max_asr: MaxAsr = None,
    max_ca_drop: MaxCaDrop = None,
    json_out: JsonOut = False,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """The job's report: ASR/CA before and after (exit 1 if a given policy fails)."""
    from rich.console import Console

    from sanitizer.report_html import check_policy, render_report_html

    policy = _policy(max_asr, max_ca_drop)
    with _handle_errors(), _client(url, api_key) as client:
        report = client.jobs.report(job_id)
        job = client.jobs.get(job_id) if html is not None else None
    verdict = None if policy.is_empty() else check_policy(report, policy)
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(render_report_html(report, policy=policy, job=job.raw if job else None))
    if json_out:
        _print_json(report if verdict is None else {**report, "policy": verdict.to_dict()})
    else:
        Console().print(_summary_table(report, verdict))
        if html is not None:
            Console(stderr=True).print(f"HTML report written to {html}")
    raise typer.Exit(EXIT_OK if verdict is None or verdict.passed else EXIT_POLICY)


@jobs_app.command("wait", cls=_Command)
def jobs_wait(
    job_id: Annotated[str, typer.Argument(help="job id")],
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="give up waiting after this many seconds")
    ] = None,
    poll_interval: Annotated[float, typer.Option("--poll-interval")] = 2.0,
    max_asr: MaxAsr = None,
    max_ca_drop: MaxCaDrop = None,
    json_out: JsonOut = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress output")] = False,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Wait for a job submitted without --wait; exit codes as `submit --wait` (0 passed,
    1 policy failed, 2 job failed or cancelled)."""
    from rich.console import Console

    from sanitizer.report_html import check_policy

    policy = _policy(max_asr, max_ca_drop)
    with _handle_errors(), _client(url, api_key) as client:
        with ProgressView(enabled=not quiet) as view:
            job = client.jobs.wait(
                job_id, timeout=timeout, poll_interval=poll_interval, on_progress=view
            )
        result: dict = {"job": job.raw}
        if not job.succeeded:
            if json_out:
                _print_json({**result, "exit_code": EXIT_JOB})
            err = job.error or {}
            _die(
                EXIT_JOB,
                f"job {job.id} {job.status}"
                + (f": [{err.get('code')}] {err.get('message')}" if err else ""),
            )
        report = client.jobs.report(job_id)
    verdict = None if policy.is_empty() else check_policy(report, policy)
    code = EXIT_OK if verdict is None or verdict.passed else EXIT_POLICY
    if json_out:
        result["metrics"] = report.get("metrics")
        if verdict is not None:
            result["policy"] = verdict.to_dict()
        _print_json({**result, "exit_code": code})
    else:
        Console().print(_summary_table(report, verdict))
    raise typer.Exit(code)


@jobs_app.command("download", cls=_Command)
def jobs_download(
    job_id: Annotated[str, typer.Argument(help="job id (succeeded)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder to unpack the adapter into")],
    json_out: JsonOut = False,
    url: Url = None,
    api_key: ApiKey = None,
) -> None:
    """Download the sanitized adapter, check its sha256 and manifest, unpack it (exit 5 when
    verification fails)."""
    with _handle_errors(), _client(url, api_key) as client:
        d = client.jobs.download_adapter(job_id, out, verify=True)
    info = {
        "path": str(d.path),
        "sha256": d.archive_sha256,
        "verified": d.verified,
        "files": d.files,
    }
    if json_out:
        _print_json(info)
    else:
        typer.echo(f"adapter of {job_id} in {d.path} (sha256 {d.archive_sha256[:12]}…, verified)")
