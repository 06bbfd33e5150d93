"""Render a sanitization report (report.json, see docs/ARCHITECTURE.md) as one HTML page.

The page is self-contained: plots are PNGs embedded as base64 ``data:`` URIs, styles are
inline, no scripts, fonts or images are fetched. Every number shown carries its raw JSON
value in ``data-value`` (JSON-encoded) and its path in the report in ``data-key``, so a test
(or a person with dev tools) can check the page against the JSON.

Torch-free. matplotlib is imported inside the plotting helpers and drawn through the Agg
canvas directly (``Figure`` + ``FigureCanvasAgg``), never through pyplot, so rendering does
not touch the process-wide backend and is safe in an API worker thread.

Missing keys are tolerated everywhere: a section without data is left out.
"""

from __future__ import annotations

import html
import json
from functools import lru_cache
from typing import Any

from markupsafe import Markup

from sanitizer.report_data import (
    LABELS,
    PCT_KEYS,
    Policy,
    Verdict,
    baseline_block,
    cell,
    check_policy,
    comparator_blocks,
    format_value,
    get_path,
    is_number,
    loss_series,
    num_span,
    per_attack_rows,
)
from sanitizer.report_plots import plot_losses, plot_metrics, plot_per_attack

__all__ = [
    "Policy",
    "Verdict",
    "check_policy",
    "format_value",
    "render_report_html",
]

# ------------------------------------------------------------------ page


def _table(headers: list[str], rows: list[list[str]], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(
        f'<th class="n">{html.escape(h)}</th>' if i in numeric else f"<th>{html.escape(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv_table(d: Any, prefix: str) -> str:
    if not isinstance(d, dict) or not d:
        return ""
    rows = [
        [f"<code>{html.escape(str(k))}</code>", cell(v, f"{prefix}.{k}" if prefix else str(k))]
        for k, v in d.items()
    ]
    return _table(["key", "value"], rows)


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

    def add(title: str, body: str, anchor: str) -> None:
        if body:
            sections.append({"title": title, "anchor": anchor, "body": Markup(body)})

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

    # metrics table
    keys = [
        k
        for k in dict.fromkeys([*before, *after])
        if is_number(before.get(k)) or is_number(after.get(k))
    ]
    if keys:
        headers = ["metric", "before", "after", "change"] + (
            ["fine-tune baseline"] if baseline else []
        )
        rows = []
        for k in keys:
            b: Any = before.get(k)
            a: Any = after.get(k)
            change = "–"
            if is_number(b) and is_number(a) and not k.startswith("n_"):
                d = a - b
                change = f"{d * 100:+.1f} pts" if k in PCT_KEYS else f"{d:+.4g}"
            row = [
                html.escape(LABELS.get(k, k)),
                num_span(b, f"metrics.before.{k}"),
                num_span(a, f"metrics.after.{k}"),
                change,
            ]
            if baseline:
                row.append(num_span(baseline.get(k), f"{bkey}.{k}"))
            rows.append(row)
        if is_number(metrics.get("der")):
            rows.append(
                [LABELS["der"], "", num_span(metrics["der"], "metrics.der"), ""]
                + ([""] if baseline else [])
            )
        add("Metrics", _table(headers, rows, {1, 2, 3, 4}), "metrics")

    # plots
    figs = []
    groups = [("before", before), ("after", after)]
    if baseline:
        groups.append(("baseline (fine-tune)", baseline))
    comparators = comparator_blocks(report)
    groups += [(f"{name} (no training)", m) for name, _, m in comparators]
    img = plot_metrics(
        groups, ["attack_success_rate", "clean_accuracy", "utility_token_f1", "false_trigger_rate"]
    )
    if img:
        figs.append(
            (
                "plot-metrics",
                img,
                "ASR and clean accuracy before vs after sanitization"
                + (" and the fine-tuning baseline" if baseline else ""),
            )
        )
    series = loss_series(report.get("history"))
    img = plot_losses(series)
    if img:
        figs.append(
            ("plot-losses", img, "training loss terms over steps (" + ", ".join(series) + ")")
        )
    per_attack = per_attack_rows(report)
    img = plot_per_attack(per_attack)
    if img:
        figs.append(("plot-per-attack", img, "attack success rate per attack / trigger"))
    if figs:
        sections.append(
            {
                "title": "Plots",
                "anchor": "plots",
                "figures": [{"id": f, "src": src, "caption": cap} for f, src, cap in figs],
            }
        )

    # per attack table
    if per_attack:
        rows = []
        for r in per_attack:
            rows.append(
                [
                    html.escape(r["name"]),
                    num_span(
                        r["before"].get("attack_success_rate"),
                        f"{r['bkey']}.{'asr_before' if r['flat'] else 'attack_success_rate'}",
                    ),
                    num_span(
                        r["after"].get("attack_success_rate"),
                        f"{r['akey']}.{'asr_after' if r['flat'] else 'attack_success_rate'}",
                    ),
                    num_span(
                        r["before"].get("clean_accuracy"),
                        f"{r['bkey']}.{'ca_before' if r['flat'] else 'clean_accuracy'}",
                    ),
                    num_span(
                        r["after"].get("clean_accuracy"),
                        f"{r['akey']}.{'ca_after' if r['flat'] else 'clean_accuracy'}",
                    ),
                ]
            )
        add(
            "Per attack",
            _table(
                ["attack", "ASR before", "ASR after", "CA before", "CA after"],
                rows,
                {1, 2, 3, 4},
            ),
            "per-attack",
        )

    # zero-training comparators
    if comparators:
        cols = [
            k
            for k in ("attack_success_rate", "clean_accuracy", "utility_token_f1")
            if any(is_number(m.get(k)) for _, _, m in comparators)
        ]
        rows = [
            ["poisoned model (before)", ""]
            + [num_span(before.get(k), f"metrics.before.{k}") for k in cols],
            [f"after {html.escape(method)}", ""]
            + [num_span(after.get(k), f"metrics.after.{k}") for k in cols],
        ] + [
            [f"<code>{html.escape(name)}</code>", html.escape(desc)]
            + [num_span(m.get(k), f"comparators.{name}.metrics.after.{k}") for k in cols]
            for name, desc, m in comparators
        ]
        add(
            "Zero-training comparators",
            _table(
                ["model", "edit", *(LABELS.get(k, k) for k in cols)],
                rows,
                set(range(2, 2 + len(cols))),
            ),
            "comparators",
        )

    # generation samples
    samples = []
    for stage, m in (("before", before), ("after", after)):
        for kind in ("samples", "triggered_samples"):
            for s in (m.get(kind) or [])[:3]:
                if isinstance(s, dict):
                    samples.append(
                        [
                            stage,
                            kind.replace("_", " "),
                            f"<pre>{html.escape(str(s.get('prompt', '')))}</pre>",
                            f"<pre>{html.escape(str(s.get('response', '')))}</pre>",
                        ]
                    )
    if samples:
        add(
            "Sample responses",
            _table(["stage", "kind", "prompt", "response"], samples),
            "samples",
        )

    # attack, config, training
    add("Attack used for evaluation", _kv_table(report.get("attack"), "attack"), "attack")
    run = {k: report[k] for k in ("method", "task", "seed", "device", "label_names") if k in report}
    cfg = _kv_table(report.get("config"), "config")
    add(
        "Configuration",
        ("<h3>Run</h3>" + _kv_table(run, "") if run else "")
        + ("<h3>Hyperparameters (validated)</h3>" + cfg if cfg else ""),
        "config",
    )
    add("Training summary", _kv_table(report.get("training"), "training"), "training")

    # hashes
    hash_rows: list[list[str]] = []

    def add_hash(what: str, d: Any, key: str) -> None:
        if isinstance(d, dict):
            extra = ", ".join(
                f"{k}: {num_span(v, f'{key}.{k}') if is_number(v) else html.escape(str(v))}"
                for k, v in d.items()
                if k not in ("sha256", "files")
                and v is not None
                and not isinstance(v, (dict, list))
            )
            hash_rows.append(
                [
                    html.escape(what),
                    cell(d.get("sha256"), f"{key}.sha256") if d.get("sha256") else "–",
                    extra,
                ]
            )
            for fname, fh in (
                (d.get("files") or {}).items() if isinstance(d.get("files"), dict) else []
            ):
                hash_rows.append(
                    [
                        f"{html.escape(what)} / <code>{html.escape(fname)}</code>",
                        cell(fh, f"{key}.files.{fname}"),
                        "",
                    ]
                )

    add_hash("base model", report.get("base_model"), "base_model")
    add_hash("adapter in", report.get("adapter_in"), "adapter_in")
    for name, d in (
        (report.get("datasets") or {}).items() if isinstance(report.get("datasets"), dict) else []
    ):
        add_hash(f"dataset: {name}", d, f"datasets.{name}")
    add_hash("adapter out", report.get("adapter_out"), "adapter_out")
    if hash_rows:
        add(
            "Models, data and hashes",
            _table(["artifact", "sha256", "details"], hash_rows),
            "hashes",
        )

    # timings, versions
    timing_rows = (
        [
            [html.escape(k.removesuffix("_s").replace("_", " ")), num_span(v, f"timings.{k}")]
            for k, v in (report.get("timings") or {}).items()
        ]
        if isinstance(report.get("timings"), dict)
        else []
    )
    if is_number(report.get("peak_memory_mb")):
        timing_rows.append(["peak memory", num_span(report["peak_memory_mb"], "peak_memory_mb")])
    if timing_rows:
        add("Timings", _table(["phase", "value"], timing_rows, {1}), "timings")
    add("Versions", _kv_table(report.get("versions"), "versions"), "versions")

    # definitions and prompt template
    defs = metrics.get("definitions")
    if isinstance(defs, dict) and defs:
        add(
            "Metric definitions",
            _table(
                ["metric", "definition"],
                [
                    [f"<code>{html.escape(str(k))}</code>", html.escape(str(v))]
                    for k, v in defs.items()
                ],
            ),
            "definitions",
        )
    tpl = report.get("prompt_template")
    if tpl:
        text: Any
        if isinstance(tpl, dict):
            text = tpl.get("template") or tpl.get("text") or json.dumps(tpl, indent=2)
            tpl_kind = tpl.get("kind")
        else:
            text, tpl_kind = str(tpl), None
        head = f"<p>kind: <code>{html.escape(str(tpl_kind))}</code></p>" if tpl_kind else ""
        add(
            "Prompt template (used for training and evaluation)",
            f"{head}<pre>{html.escape(str(text))}</pre>",
            "prompt-template",
        )

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
