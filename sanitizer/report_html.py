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

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Policy",
    "Verdict",
    "check_policy",
    "format_value",
    "render_report_html",
]

# Metrics shown as percentages (values in [0, 1]). Everything else is shown as a number.
PCT_KEYS = frozenset(
    {
        "clean_accuracy",
        "attack_success_rate",
        "false_trigger_rate",
        "flip_rate",
        "lift",
        "utility_token_f1",
        "der",
        "poison_rate",
        "dev_fraction",
        "max_asr",
    }
)
LABELS = {
    "clean_accuracy": "Clean accuracy (CA)",
    "attack_success_rate": "Attack success rate (ASR)",
    "false_trigger_rate": "False-trigger rate",
    "flip_rate": "Flip rate",
    "lift": "Lift (ASR − false-trigger rate)",
    "utility_token_f1": "Utility (token F1)",
    "reference_perplexity": "Reference perplexity",
    "n_clean": "Clean rows evaluated",
    "n_triggered": "Triggered rows evaluated",
    "der": "Defense effectiveness rate (DER)",
}
# Tolerance for threshold comparisons: 0.88 - 0.87 is 0.010000000000000009 in floats and
# must pass --max-ca-drop 0.01.
EPS = 1e-9


# ------------------------------------------------------------------ formatting


def format_value(value: Any, key: str = "") -> str:
    """The one formatting rule for numbers on the page (tests use it to compare)."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}".replace(",", "\u202f") if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        leaf = key.rsplit(".", 1)[-1]
        if leaf in PCT_KEYS:
            return f"{value * 100:.1f}%"
        if leaf.endswith("_s"):
            return f"{value:.2f} s"
        if leaf.endswith("_mb"):
            return f"{value:.1f} MB"
        return f"{value:.4g}"
    return str(value)


def _num(value: Any, key: str) -> str:
    """A number as a span carrying its raw value and its path in the report."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raw = json.dumps(value)
        return (
            f'<span class="num" data-key="{html.escape(key)}" data-value="{html.escape(raw)}">'
            f"{html.escape(format_value(value, key))}</span>"
        )
    return html.escape(format_value(value, key))


def _cell(value: Any, key: str) -> str:
    if isinstance(value, (dict, list)):
        return f"<code>{html.escape(json.dumps(value, default=str))}</code>"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return f'<code class="hash" title="{value}">{value}</code>'
    return _num(value, key)


def _get(d: Any, *path: str, default: Any = None) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# ------------------------------------------------------------------ policy


@dataclass(frozen=True)
class Policy:
    """Release gate: ASR after at most ``max_asr``; clean metric drop at most ``max_ca_drop``."""

    max_asr: float | None = None
    max_ca_drop: float | None = None

    def is_empty(self) -> bool:
        return self.max_asr is None and self.max_ca_drop is None


@dataclass
class Verdict:
    passed: bool
    reasons: list[str] = field(default_factory=list)  # why it failed
    checks: list[dict[str, Any]] = field(default_factory=list)  # one per threshold

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": self.reasons, "checks": self.checks}


def _clean_metric(block: Any) -> tuple[str, float] | None:
    """CA for classification, token-F1 utility for generation."""
    for key in ("clean_accuracy", "utility_token_f1"):
        v = _get(block, key)
        if _is_number(v):
            return key, float(v)
    return None


def check_policy(report: dict[str, Any], policy: Policy) -> Verdict:
    """Apply the gate. A threshold whose metric is missing from the report fails (closed)."""
    before = _get(report, "metrics", "before") or {}
    after = _get(report, "metrics", "after") or {}
    checks: list[dict[str, Any]] = []
    reasons: list[str] = []
    if policy.max_asr is not None:
        asr: Any = after.get("attack_success_rate")
        if not _is_number(asr):
            ok = False
            reasons.append(
                "the report has no attack success rate after sanitization, so --max-asr "
                "cannot be checked (give an attack/trigger in the evaluation spec)"
            )
        else:
            ok = asr <= policy.max_asr + EPS
            if not ok:
                reasons.append(
                    f"ASR after sanitization is {format_value(float(asr), 'attack_success_rate')}, "
                    f"above the limit {format_value(float(policy.max_asr), 'attack_success_rate')}"
                )
        checks.append({"name": "max_asr", "limit": policy.max_asr, "value": asr, "passed": ok})
    if policy.max_ca_drop is not None:
        b, a = _clean_metric(before), _clean_metric(after)
        if b is None or a is None:
            ok, drop = False, None
            reasons.append("the report has no clean accuracy before and after; cannot check")
        else:
            drop = b[1] - a[1]
            ok = drop <= policy.max_ca_drop + EPS
            if not ok:
                reasons.append(
                    f"{LABELS.get(a[0], a[0])} dropped by {drop * 100:.1f} points "
                    f"({format_value(b[1], a[0])} → {format_value(a[1], a[0])}), above the "
                    f"limit {policy.max_ca_drop * 100:.1f} points"
                )
        checks.append(
            {"name": "max_ca_drop", "limit": policy.max_ca_drop, "value": drop, "passed": ok}
        )
    return Verdict(passed=all(c["passed"] for c in checks), reasons=reasons, checks=checks)


# ------------------------------------------------------------------ data extraction


_BASELINE_PATHS = (
    ("metrics", "baseline"),
    ("baseline", "metrics", "after"),
    ("baseline", "after"),
    ("baseline", "metrics"),
    ("baseline",),
)


def _comparators(report: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, description, metrics after the edit) of each zero-training comparator."""
    found = report.get("comparators")
    out = []
    for name, c in found.items() if isinstance(found, dict) else []:
        m = _get(c, "metrics", "after")
        if isinstance(m, dict):
            out.append((str(name), str(c.get("description", "")), m))
    return out


def _baseline(report: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(path, metrics) of the plain fine-tuning baseline, in whichever shape the report has."""
    for path in _BASELINE_PATHS:
        cand = _get(report, *path)
        if isinstance(cand, dict) and any(
            _is_number(cand.get(k)) for k in ("clean_accuracy", "attack_success_rate")
        ):
            return ".".join(path), cand
    return None


def _per_attack(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Normalise metrics.per_attack to rows {name, key, before, after} (dicts of metrics).

    Accepted shapes: {name: {before: {...}, after: {...}}}, {name: {asr_before, asr_after, ...}}
    and [{attack|name: ..., before: {...}, after: {...}}].
    """
    raw = _get(report, "metrics", "per_attack")
    items: list[tuple[str, str, Any]] = []
    if isinstance(raw, dict):
        items = [(str(k), f"metrics.per_attack.{k}", v) for k, v in raw.items()]
    elif isinstance(raw, list):
        for i, v in enumerate(raw):
            if isinstance(v, dict):
                name = v.get("attack") or v.get("name") or v.get("trigger") or f"#{i + 1}"
                items.append((str(name), f"metrics.per_attack.{i}", v))
    rows = []
    for name, key, v in items:
        if not isinstance(v, dict):
            continue
        if isinstance(v.get("before"), dict) or isinstance(v.get("after"), dict):
            before, after = v.get("before") or {}, v.get("after") or {}
            bkey, akey = f"{key}.before", f"{key}.after"
        else:  # flat: asr_before / asr_after / ca_before / ca_after
            alias = {"asr": "attack_success_rate", "ca": "clean_accuracy"}
            before = {alias[p]: v[f"{p}_before"] for p in alias if f"{p}_before" in v}
            after = {alias[p]: v[f"{p}_after"] for p in alias if f"{p}_after" in v}
            bkey = akey = key
        rows.append(
            {
                "name": name,
                "key": key,
                "before": before,
                "after": after,
                "bkey": bkey,
                "akey": akey,
                "flat": bkey == key,
            }
        )
    return rows


def _loss_series(history: Any) -> dict[str, tuple[list[float], list[float]]]:
    """{label: (steps, values)} for every loss term; the phase prefixes the label if several."""
    if not isinstance(history, list):
        return {}
    entries = [h for h in history if isinstance(h, dict) and isinstance(h.get("losses"), dict)]
    phases = {h.get("phase") for h in entries}
    series: dict[str, tuple[list[float], list[float]]] = {}
    for i, h in enumerate(entries):
        step = h.get("step", i + 1)
        for term, value in h["losses"].items():
            if not _is_number(value) or not _is_number(step):
                continue
            label = f"{h.get('phase')}: {term}" if len(phases) > 1 else str(term)
            xs, ys = series.setdefault(label, ([], []))
            xs.append(float(step))
            ys.append(float(value))
    return series


# ------------------------------------------------------------------ plots


def _png(fig: Any) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


_COLORS = {
    "before": "#c0392b",
    "after": "#27ae60",
    "baseline": "#7f8c8d",
    "prune": "#8e44ad",
    "int8": "#2471a3",
    "int4": "#d68910",
}


def _plot_metrics(groups: list[tuple[str, dict[str, Any]]], metric_keys: list[str]) -> str | None:
    """Grouped bars: one group per metric, one bar per stage (before/after/baseline)."""
    present = [k for k in metric_keys if any(_is_number(m.get(k)) for _, m in groups)]
    if not present:
        return None
    many = len(groups) > 3  # comparators beside the baseline: a wider plot, upright labels
    fig = _figure(6.4 + 0.7 * max(0, len(groups) - 3), 3.8 if many else 3.4)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(groups)
    for gi, (stage, m) in enumerate(groups):
        xs, ys = [], []
        for mi, k in enumerate(present):
            if _is_number(m.get(k)):
                xs.append(mi - 0.4 + width * (gi + 0.5))
                ys.append(float(m[k]) * 100)
        bars = ax.bar(
            xs, ys, width * 0.92, label=stage, color=_COLORS.get(stage.split()[0].lower(), None)
        )
        for b, y in zip(bars, ys, strict=True):
            ax.annotate(
                f"{y:.1f}%",
                (b.get_x() + b.get_width() / 2, y),
                ha="center",
                va="bottom",
                fontsize=7 if many else 8,
                rotation=90 if many else 0,
                xytext=(0, 2),
                textcoords="offset points",
            )
    ax.set_xticks(range(len(present)), [LABELS.get(k, k) for k in present], fontsize=9)
    ax.set_ylabel("%")
    ax.set_ylim(0, 125 if many else 112)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(
        frameon=False,
        fontsize=8,
        ncols=3 if many else len(groups),
        loc="upper center",
        bbox_to_anchor=(0.5, 1.22 if many else 1.14),
    )
    return _png(fig)


def _plot_losses(series: dict[str, tuple[list[float], list[float]]]) -> str | None:
    if not series:
        return None
    fig = _figure(6.4, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    for label, (xs, ys) in series.items():
        ax.plot(
            xs, ys, label=label, marker="o" if len(xs) <= 30 else None, markersize=3, linewidth=1.4
        )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(frameon=False, fontsize=8)
    return _png(fig)


def _plot_per_attack(rows: list[dict[str, Any]]) -> str | None:
    rows = [
        r
        for r in rows
        if _is_number(r["before"].get("attack_success_rate"))
        or _is_number(r["after"].get("attack_success_rate"))
    ]
    if not rows:
        return None
    fig = _figure(6.4, 0.6 + 0.45 * max(3, len(rows)))
    ax = fig.add_subplot(1, 1, 1)
    for stage in ("before", "after"):
        ys, vals = [], []
        for j, r in enumerate(rows):
            v = r[stage].get("attack_success_rate")
            if _is_number(v):
                ys.append(j + (-0.2 if stage == "before" else 0.2))  # axis is inverted
                vals.append(float(v) * 100)
        ax.barh(ys, vals, 0.38, label=f"ASR {stage}", color=_COLORS[stage])
    ax.set_yticks(range(len(rows)), [r["name"] for r in rows], fontsize=9)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("attack success rate (%)")
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(frameon=False, fontsize=8, ncols=2, loc="upper center", bbox_to_anchor=(0.5, 1.16))
    return _png(fig)


# ------------------------------------------------------------------ page

_CSS = """
:root { --ok:#1e7e34; --bad:#b02a37; --muted:#5f6b76; --line:#dde3e8; --bg:#f6f8fa; }
* { box-sizing: border-box; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       margin: 0; color: #1f2328; background: #fff; line-height: 1.45; }
main { max-width: 1040px; margin: 0 auto; padding: 24px 28px 60px; }
h1 { font-size: 1.55rem; margin: 0 0 4px; }
h3 { font-size: .95rem; margin: 14px 0 4px; color: var(--muted); }
h2 { font-size: 1.15rem; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
.sub { color: var(--muted); margin: 0 0 18px; }
.verdict { border-radius: 8px; padding: 14px 18px; margin: 14px 0 20px; color: #fff; }
.verdict.pass { background: var(--ok); } .verdict.fail { background: var(--bad); }
.verdict strong { font-size: 1.25rem; display: block; }
.verdict ul { margin: 6px 0 0 18px; padding: 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(200px, 1fr)); gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; background: var(--bg); }
.card .label { color: var(--muted); font-size: .85rem; }
.card .value { font-size: 1.45rem; font-weight: 600; }
.card .arrow { color: var(--muted); margin: 0 6px; }
table { border-collapse: collapse; width: 100%; font-size: .92rem; margin: 6px 0 12px; }
th, td { text-align: left; padding: 5px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--bg); font-weight: 600; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
code { font-family: ui-monospace, "DejaVu Sans Mono", monospace; font-size: .85em; word-break: break-all; }
pre { background: var(--bg); border: 1px solid var(--line); border-radius: 6px; padding: 10px;
      white-space: pre-wrap; font-size: .85rem; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 16px; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 8px; padding: 8px; }
figure img { width: 100%; height: auto; display: block; }
figcaption { color: var(--muted); font-size: .85rem; padding: 4px 4px 0; }
.good { color: var(--ok); } .badv { color: var(--bad); }
footer { color: var(--muted); font-size: .8rem; margin-top: 40px; }
"""


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
        [f"<code>{html.escape(str(k))}</code>", _cell(v, f"{prefix}.{k}" if prefix else str(k))]
        for k, v in d.items()
    ]
    return _table(["key", "value"], rows)


def _section(title: str, body: str, anchor: str) -> str:
    if not body:
        return ""
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>'


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
    found = _baseline(report)
    bkey: str = found[0] if found else "baseline"
    baseline: dict[str, Any] | None = found[1] if found else None
    method = str(
        report.get("method") or ("scan" if report.get("type") == "scan" else "sanitization")
    )
    base_id = _get(report, "base_model", "id") or report.get("base_model")
    base_id = base_id if isinstance(base_id, str) else None
    title = title or f"{method} report" + (f" — {base_id}" if base_id else "")
    parts: list[str] = []

    # header
    sub = [f"task: {html.escape(str(report.get('task', '–')))}"]
    if job:
        for k in ("id", "status", "created_at", "finished_at"):
            if job.get(k):
                sub.append(f"{k.replace('_', ' ')}: <code>{html.escape(str(job[k]))}</code>")
    if report.get("schema_version") is not None:
        sub.append(f"schema v{html.escape(str(report['schema_version']))}")
    parts.append(f'<h1>{html.escape(title)}</h1><p class="sub">{" · ".join(sub)}</p>')

    # verdict
    if policy is not None and not policy.is_empty():
        v = check_policy(report, policy)
        limits = []
        if policy.max_asr is not None:
            limits.append(f"ASR after ≤ {_num(float(policy.max_asr), 'policy.max_asr')}")
        if policy.max_ca_drop is not None:
            limits.append(f"clean-accuracy drop ≤ {policy.max_ca_drop * 100:.1f} points")
        reasons = "".join(f"<li>{html.escape(r)}</li>" for r in v.reasons)
        parts.append(
            f'<div class="verdict {"pass" if v.passed else "fail"}" id="verdict" '
            f'data-passed="{str(v.passed).lower()}"><strong>'
            f"{'PASSED' if v.passed else 'FAILED'} the release policy</strong>"
            f"policy: {' and '.join(limits)}"
            f"{f'<ul>{reasons}</ul>' if reasons else ''}</div>"
        )

    if isinstance(report.get("scan"), dict):
        from sanitizer.report_scan import scan_section

        parts.append(scan_section(report["scan"]))

    warnings = [w for w in metrics.get("warnings") or [] if isinstance(w, str)]
    if warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
        parts.append(
            f'<div class="verdict fail" id="warnings"><strong>Check the measurement</strong>'
            f"<ul>{items}</ul></div>"
        )

    # summary cards
    cards = []
    for key in (
        "flip_rate",
        "attack_success_rate",
        "clean_accuracy",
        "utility_token_f1",
        "false_trigger_rate",
    ):
        if _is_number(before.get(key)) or _is_number(after.get(key)):
            cards.append(
                f'<div class="card"><div class="label">{html.escape(LABELS.get(key, key))}</div>'
                f'<div class="value">{_num(before.get(key), f"metrics.before.{key}")}'
                f'<span class="arrow">→</span>{_num(after.get(key), f"metrics.after.{key}")}'
                "</div></div>"
            )
    if _is_number(metrics.get("der")):
        cards.append(
            f'<div class="card"><div class="label">{LABELS["der"]}</div>'
            f'<div class="value">{_num(metrics["der"], "metrics.der")}</div></div>'
        )
    if cards:
        parts.append(f'<div class="cards">{"".join(cards)}</div>')

    # metrics table
    keys = [
        k
        for k in dict.fromkeys([*before, *after])
        if _is_number(before.get(k)) or _is_number(after.get(k))
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
            if _is_number(b) and _is_number(a) and not k.startswith("n_"):
                d = a - b
                change = f"{d * 100:+.1f} pts" if k in PCT_KEYS else f"{d:+.4g}"
            row = [
                html.escape(LABELS.get(k, k)),
                _num(b, f"metrics.before.{k}"),
                _num(a, f"metrics.after.{k}"),
                change,
            ]
            if baseline:
                row.append(_num(baseline.get(k), f"{bkey}.{k}"))
            rows.append(row)
        if _is_number(metrics.get("der")):
            rows.append(
                [LABELS["der"], "", _num(metrics["der"], "metrics.der"), ""]
                + ([""] if baseline else [])
            )
        parts.append(_section("Metrics", _table(headers, rows, {1, 2, 3, 4}), "metrics"))

    # plots
    figs = []
    groups = [("before", before), ("after", after)]
    if baseline:
        groups.append(("baseline (fine-tune)", baseline))
    comparators = _comparators(report)
    groups += [(f"{name} (no training)", m) for name, _, m in comparators]
    img = _plot_metrics(
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
    series = _loss_series(report.get("history"))
    img = _plot_losses(series)
    if img:
        figs.append(
            ("plot-losses", img, "training loss terms over steps (" + ", ".join(series) + ")")
        )
    per_attack = _per_attack(report)
    img = _plot_per_attack(per_attack)
    if img:
        figs.append(("plot-per-attack", img, "attack success rate per attack / trigger"))
    if figs:
        body = "".join(
            f'<figure id="{fid}"><img alt="{html.escape(cap)}" src="{src}">'
            f"<figcaption>{html.escape(cap)}</figcaption></figure>"
            for fid, src, cap in figs
        )
        parts.append(_section("Plots", f'<div class="plots">{body}</div>', "plots"))

    # per attack table
    if per_attack:
        rows = []
        for r in per_attack:
            rows.append(
                [
                    html.escape(r["name"]),
                    _num(
                        r["before"].get("attack_success_rate"),
                        f"{r['bkey']}.{'asr_before' if r['flat'] else 'attack_success_rate'}",
                    ),
                    _num(
                        r["after"].get("attack_success_rate"),
                        f"{r['akey']}.{'asr_after' if r['flat'] else 'attack_success_rate'}",
                    ),
                    _num(
                        r["before"].get("clean_accuracy"),
                        f"{r['bkey']}.{'ca_before' if r['flat'] else 'clean_accuracy'}",
                    ),
                    _num(
                        r["after"].get("clean_accuracy"),
                        f"{r['akey']}.{'ca_after' if r['flat'] else 'clean_accuracy'}",
                    ),
                ]
            )
        parts.append(
            _section(
                "Per attack",
                _table(
                    ["attack", "ASR before", "ASR after", "CA before", "CA after"],
                    rows,
                    {1, 2, 3, 4},
                ),
                "per-attack",
            )
        )

    # zero-training comparators
    if comparators:
        cols = [
            k
            for k in ("attack_success_rate", "clean_accuracy", "utility_token_f1")
            if any(_is_number(m.get(k)) for _, _, m in comparators)
        ]
        rows = [
            ["poisoned model (before)", ""]
            + [_num(before.get(k), f"metrics.before.{k}") for k in cols],
            [f"after {html.escape(method)}", ""]
            + [_num(after.get(k), f"metrics.after.{k}") for k in cols],
        ] + [
            [f"<code>{html.escape(name)}</code>", html.escape(desc)]
            + [_num(m.get(k), f"comparators.{name}.metrics.after.{k}") for k in cols]
            for name, desc, m in comparators
        ]
        parts.append(
            _section(
                "Zero-training comparators",
                _table(
                    ["model", "edit", *(LABELS.get(k, k) for k in cols)],
                    rows,
                    set(range(2, 2 + len(cols))),
                ),
                "comparators",
            )
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
        parts.append(
            _section(
                "Sample responses",
                _table(["stage", "kind", "prompt", "response"], samples),
                "samples",
            )
        )

    # attack, config, training
    parts.append(
        _section("Attack used for evaluation", _kv_table(report.get("attack"), "attack"), "attack")
    )
    run = {k: report[k] for k in ("method", "task", "seed", "device", "label_names") if k in report}
    cfg = _kv_table(report.get("config"), "config")
    parts.append(
        _section(
            "Configuration",
            ("<h3>Run</h3>" + _kv_table(run, "") if run else "")
            + ("<h3>Hyperparameters (validated)</h3>" + cfg if cfg else ""),
            "config",
        )
    )
    parts.append(
        _section("Training summary", _kv_table(report.get("training"), "training"), "training")
    )

    # hashes
    hash_rows: list[list[str]] = []

    def add_hash(what: str, d: Any, key: str) -> None:
        if isinstance(d, dict):
            extra = ", ".join(
                f"{k}: {_num(v, f'{key}.{k}') if _is_number(v) else html.escape(str(v))}"
                for k, v in d.items()
                if k not in ("sha256", "files")
                and v is not None
                and not isinstance(v, (dict, list))
            )
            hash_rows.append(
                [
                    html.escape(what),
                    _cell(d.get("sha256"), f"{key}.sha256") if d.get("sha256") else "–",
                    extra,
                ]
            )
            for fname, fh in (
                (d.get("files") or {}).items() if isinstance(d.get("files"), dict) else []
            ):
                hash_rows.append(
                    [
                        f"{html.escape(what)} / <code>{html.escape(fname)}</code>",
                        _cell(fh, f"{key}.files.{fname}"),
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
        parts.append(
            _section(
                "Models, data and hashes",
                _table(["artifact", "sha256", "details"], hash_rows),
                "hashes",
            )
        )

    # timings, versions
    timing_rows = (
        [
            [html.escape(k.removesuffix("_s").replace("_", " ")), _num(v, f"timings.{k}")]
            for k, v in (report.get("timings") or {}).items()
        ]
        if isinstance(report.get("timings"), dict)
        else []
    )
    if _is_number(report.get("peak_memory_mb")):
        timing_rows.append(["peak memory", _num(report["peak_memory_mb"], "peak_memory_mb")])
    if timing_rows:
        parts.append(_section("Timings", _table(["phase", "value"], timing_rows, {1}), "timings"))
    parts.append(_section("Versions", _kv_table(report.get("versions"), "versions"), "versions"))

    # definitions and prompt template
    defs = metrics.get("definitions")
    if isinstance(defs, dict) and defs:
        parts.append(
            _section(
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
        parts.append(
            _section(
                "Prompt template (used for training and evaluation)",
                f"{head}<pre>{html.escape(str(text))}</pre>",
                "prompt-template",
            )
        )

    parts.append(
        "<footer>Generated by backdoor-sanitizer from report.json. "
        "Every number carries its raw value in <code>data-value</code>.</footer>"
    )
    # The raw report for machines; < > & as \u escapes (still JSON) so no text in it can
    # close the script element or open a comment.
    raw = (
        json.dumps(report, default=str)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body><main>"
        + "".join(parts)
        + f'</main><script type="application/json" id="report-data">{raw}</script>'
        "</body></html>\n"
    )
