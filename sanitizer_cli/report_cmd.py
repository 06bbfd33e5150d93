"""`sanitizer report`: render a report.json as a self-contained HTML page, offline (no
service needed); exits 1 when a given release policy fails."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from sanitizer_cli.client_common import EXIT_POLICY, EXIT_USAGE, MaxAsr, MaxCaDrop, _die, _policy


def report(
    report_json: Annotated[Path, typer.Argument(help="report.json of a job or a local run")],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="HTML file (default: next to the JSON)")
    ] = None,
    max_asr: MaxAsr = None,
    max_ca_drop: MaxCaDrop = None,
) -> None:
    """Render a report.json as a self-contained HTML page (plots embedded, no network)."""
    from sanitizer.report_html import check_policy, render_report_html

    try:
        data = json.loads(report_json.read_text())
    except FileNotFoundError:
        _die(EXIT_USAGE, f"{report_json}: no such file")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        _die(EXIT_USAGE, f"{report_json} is not JSON: {e}")
    if not isinstance(data, dict):
        _die(EXIT_USAGE, f"{report_json} does not hold a report object")
    policy = _policy(max_asr, max_ca_drop)
    out = output or report_json.with_suffix(".html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report_html(data, policy=policy))
    typer.echo(str(out))
    if not policy.is_empty() and not check_policy(data, policy).passed:
        raise typer.Exit(EXIT_POLICY)
