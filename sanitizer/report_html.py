"""Render a sanitization report (report.json, see docs/ARCHITECTURE.md) as one HTML page.

The page is self-contained: plots are PNGs embedded as base64 ``data:`` URIs, styles are
inline, no scripts, fonts or images are fetched. Every number shown carries its raw JSON
value in ``data-value`` (JSON-encoded) and its path in the report in ``data-key``, so a test
(or a person with dev tools) can check the page against the JSON.

Torch-free. matplotlib is imported inside the plotting helpers and drawn through the Agg
canvas directly (``Figure`` + ``FigureCanvasAgg``), never through pyplot, so rendering does
not touch the process-wide backend and is safe in an API worker thread.

Missing keys are tolerated everywhere: a section without data is left out. The header, verdict
and cards are built here, the sections below them in ``report_sections``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from markupsafe import Markup

from sanitizer.report_data import (
    LABELS,
    Policy,
    Verdict,
    baseline_block,
    check_policy,
    format_value,
    get_path,
    is_number,
    num_span,
)
from sanitizer.report_sections import SECTIONS, Page

__all__ = [
    "Policy",
    "Verdict",
    "check_policy",
    "format_value",
    "render_report_html",
]

# ------------------------------------------------------------------ page


@lru_cache(maxsize=1)
def _template() -> Any:
    """The page (templates/report.html.j2), autoescaped: only values marked ``Markup`` (the
    tables and spans built here, whose text is escaped as they are built) pass unescaped."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("sanitizer", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template("report.html.j2")


def render_report_html(
    report: dict[str, Any],
    *,
    policy: Policy | None = None,
    job: dict[str, Any] | None = None,
    title: str | None = None,
) -> str:
    """The report as one self-contained HTML page (str).

    ``policy`` adds a pass/fail banner; ``job`` (the service's job object) adds its id,
    status and timestamps to the header.
    """
    report = report if isinstance(report, dict) else {}
    metrics: dict[str, Any] = report["metrics"] if isinstance(report.get("metrics"), dict) else {}
    before: dict[str, Any] = metrics["before"] if isinstance(metrics.get("before"), dict) else {}
    after: dict[str, Any] = metrics["after"] if isinstance(metrics.get("after"), dict) else {}
    found = baseline_block(report)
    bkey: str = found[0] if found else "baseline"
    baseline: dict[str, Any] | None = found[1] if found else None
    method = str(
        report.get("method") or ("scan" if report.get("type") == "scan" else "sanitization")
    )
    base_id = get_path(report, "base_model", "id") or report.get("base_model")
    base_id = base_id if isinstance(base_id, str) else None
    title = title or f"{method} report" + (f" — {base_id}" if base_id else "")
    sections: list[dict[str, Any]] = []
    sub = [Markup("task: {}").format(report.get("task", "–"))]
    if job:
        for k in ("id", "status", "created_at", "finished_at"):
            if job.get(k):
                sub.append(Markup("{}: <code>{}</code>").format(k.replace("_", " "), job[k]))
    if report.get("schema_version") is not None:
        sub.append(Markup("schema v{}").format(report["schema_version"]))

    verdict = None
    if policy is not None and not policy.is_empty():
        v = check_policy(report, policy)
        limits = []
        if policy.max_asr is not None:
            limits.append(
                Markup("ASR after ≤ ") + Markup(num_span(float(policy.max_asr), "policy.max_asr"))
            )
        if policy.max_ca_drop is not None:
            limits.append(
                Markup("clean-accuracy drop ≤ {:.1f} points").format(policy.max_ca_drop * 100)
            )
        verdict = {"passed": v.passed, "limits": limits, "reasons": v.reasons}

    scan_html = None
    if isinstance(report.get("scan"), dict):
        from sanitizer.report_scan import scan_section

        scan_html = Markup(scan_section(report["scan"]))

    warnings = [w for w in metrics.get("warnings") or [] if isinstance(w, str)]

    cards = []
    for key in (
        "flip_rate",
        "attack_success_rate",
        "clean_accuracy",
        "utility_token_f1",
        "false_trigger_rate",
    ):
        if is_number(before.get(key)) or is_number(after.get(key)):
            cards.append(
                {
                    "label": LABELS.get(key, key),
                    "before": Markup(num_span(before.get(key), f"metrics.before.{key}")),
                    "after": Markup(num_span(after.get(key), f"metrics.after.{key}")),
                }
            )
    if is_number(metrics.get("der")):
        cards.append(
            {"label": LABELS["der"], "value": Markup(num_span(metrics["der"], "metrics.der"))}
        )

    page = Page(report, metrics, before, after, baseline, bkey, method, sections)
    for section in SECTIONS:
        section(page)

    # The raw report for machines; < > & as \u escapes (still JSON) so no text in it can
    # close the script element or open a comment.
    raw = (
        json.dumps(report, default=str)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    return str(
        _template().render(
            title=title,
            css=Markup(_css()),
            sub=sub,
            verdict=verdict,
            scan_html=scan_html,
            warnings=warnings,
            cards=cards,
            sections=sections,
            raw=Markup(raw),
        )
    )


@lru_cache(maxsize=1)
def _css() -> str:
    from importlib.resources import files

    return (files("sanitizer") / "templates" / "report.css").read_text()
