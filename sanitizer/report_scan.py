"""The scan section of the HTML report: the verdict, the evidence, the trigger candidates.
Torch-free; used by ``report_html`` for scan jobs and for sanitize jobs that ran a scan."""

from __future__ import annotations

import html
from typing import Any


def _pct(v: Any) -> str:
    return f"{100 * float(v):.1f}%" if isinstance(v, (int, float)) else "–"


def scan_section(scan: dict[str, Any]) -> str:
    """A verdict banner and the candidate table, from ``sanitizer.scan.ScanResult.to_dict``."""
    verdict = str(scan.get("verdict", "unknown"))
    flagged = verdict == "backdoor"
    target = (
        scan.get("target_name") if scan.get("target_name") is not None else scan.get("target_label")
    )
    banner = (
        f'<div class="verdict {"fail" if flagged else "pass"}" id="scan-verdict" '
        f'data-verdict="{html.escape(verdict)}"><strong>'
        + ("Backdoor detected" if flagged else "No backdoor found")
        + "</strong>"
        + f"top flip rate {_pct(scan.get('score'))} against the threshold "
        f"{_pct(scan.get('threshold'))}"
        + (f"; target: <code>{html.escape(str(target))}</code>" if flagged else "")
        + "</div>"
    )
    rows = []
    for i, c in enumerate(scan.get("candidates") or [], start=1):
        if not isinstance(c, dict):
            continue
        rows.append(
            "<tr>"
            f"<td>{i}</td><td><code>{html.escape(str(c.get('trigger', '')))}</code>"
            + (
                f" <small>(shortest form of <code>{html.escape(str(c['shortened_from']))}"
                "</code>)</small>"
                if c.get("shortened_from")
                else ""
            )
            + (" <small>(at the start)</small>" if c.get("position") == "first" else "")
            + "</td>"
            f"<td>{html.escape(str(c.get('target_name', c.get('target_label', ''))))}</td>"
            f'<td class="n">{_pct(c.get("flip_rate"))}</td>'
            f'<td class="n">{float(c.get("search_loss", 0)):.3f}</td>'
            "</tr>"
        )
    table = (
        "<table><tr><th>#</th><th>trigger candidate</th><th>turns inputs into</th>"
        '<th class="n">flip rate</th><th class="n">search loss</th></tr>'
        + "".join(rows)
        + "</table>"
        if rows
        else "<p>No candidate.</p>"
    )
    per_label = scan.get("per_label") or {}
    labels = "".join(
        f'<tr><td>{html.escape(str(k))}</td><td class="n">{_pct(v)}</td></tr>'
        for k, v in per_label.items()
    )
    gen = any(
        isinstance(c, dict) and c.get("target_label") is None for c in scan.get("candidates") or []
    )
    explain = (
        "<p>The scan inverted the responses the model continues with near certainty across "
        "clean prompts once started (a backdoor's fixed response), then searched for a few "
        "tokens that make clean prompts produce each, without knowing any trigger; each "
        "candidate's flip rate is measured on clean prompts the search never saw (of those "
        "whose clean answer lacks the response). A backdoored model has a short trigger that "
        "flips nearly all; a clean one does not.</p>"
        if gen
        else "<p>The scan searched, for each label, for a few tokens that turn clean inputs of the "
        "other labels into it, without knowing any trigger; each candidate's flip rate is "
        "measured on clean rows the search never saw (of those the model gets right). A "
        "backdoored model has a short trigger that flips nearly all; a clean one does not.</p>"
    )
    return (
        '<section id="scan"><h2>Backdoor scan</h2>'
        + banner
        + explain
        + table
        + (
            (
                "<h3>Inverted targets</h3><p>Q-score: the mean probability, across clean "
                "prompts, of each next token of the response once its first token is given."
                '</p><table><tr><th>response</th><th class="n">Q-score</th></tr>'
                if gen
                else "<h3>Best flip rate per target label</h3><table><tr><th>label</th>"
                '<th class="n">flip rate</th></tr>'
            )
            + f"{labels}</table>"
            if labels
            else ""
        )
        + "</section>"
    )
