"""What a report page shows, independent of how: the number format, the release policy and
its verdict, and the blocks read out of report.json (baseline, comparators, per-attack rows,
loss series). Torch-free; tolerant of missing keys."""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from typing import Any

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


def num_span(value: Any, key: str) -> str:
    """A number as a span carrying its raw value and its path in the report."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        raw = json.dumps(value)
        return (
            f'<span class="num" data-key="{html.escape(key)}" data-value="{html.escape(raw)}">'
            f"{html.escape(format_value(value, key))}</span>"
        )
    return html.escape(format_value(value, key))


def cell(value: Any, key: str) -> str:
    if isinstance(value, (dict, list)):
        return f"<code>{html.escape(json.dumps(value, default=str))}</code>"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return f'<code class="hash" title="{value}">{value}</code>'
    return num_span(value, key)


def get_path(d: Any, *path: str, default: Any = None) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def is_number(v: Any) -> bool:
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


def clean_metric(block: Any) -> tuple[str, float] | None:
    """CA for classification, token-F1 utility for generation."""
    for key in ("clean_accuracy", "utility_token_f1"):
        v = get_path(block, key)
        if is_number(v):
            return key, float(v)
    return None


def check_policy(report: dict[str, Any], policy: Policy) -> Verdict:
    """Apply the gate. A threshold whose metric is missing from the report fails (closed)."""
    before = get_path(report, "metrics", "before") or {}
    after = get_path(report, "metrics", "after") or {}
    checks: list[dict[str, Any]] = []
    reasons: list[str] = []
    if policy.max_asr is not None:
        asr: Any = after.get("attack_success_rate")
        if not is_number(asr):
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
        b, a = clean_metric(before), clean_metric(after)
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


def comparator_blocks(report: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, description, metrics after the edit) of each zero-training comparator."""
    found = report.get("comparators")
    out = []
    for name, c in found.items() if isinstance(found, dict) else []:
        m = get_path(c, "metrics", "after")
        if isinstance(m, dict):
            out.append((str(name), str(c.get("description", "")), m))
    return out


def baseline_block(report: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """(path, metrics) of the plain fine-tuning baseline, in whichever shape the report has."""
    for path in _BASELINE_PATHS:
        cand = get_path(report, *path)
        if isinstance(cand, dict) and any(
            is_number(cand.get(k)) for k in ("clean_accuracy", "attack_success_rate")
        ):
            return ".".join(path), cand
    return None


def per_attack_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Normalise metrics.per_attack to rows {name, key, before, after} (dicts of metrics).

    Accepted shapes: {name: {before: {...}, after: {...}}}, {name: {asr_before, asr_after, ...}}
    and [{attack|name: ..., before: {...}, after: {...}}].
    """
    raw = get_path(report, "metrics", "per_attack")
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


def loss_series(history: Any) -> dict[str, tuple[list[float], list[float]]]:
    """{label: (steps, values)} for every loss term; the phase prefixes the label if several."""
    if not isinstance(history, list):
        return {}
    entries = [h for h in history if isinstance(h, dict) and isinstance(h.get("losses"), dict)]
    phases = {h.get("phase") for h in entries}
    series: dict[str, tuple[list[float], list[float]]] = {}
    for i, h in enumerate(entries):
        step = h.get("step", i + 1)
        for term, value in h["losses"].items():
            if not is_number(value) or not is_number(step):
                continue
            label = f"{h.get('phase')}: {term}" if len(phases) > 1 else str(term)
            xs, ys = series.setdefault(label, ([], []))
            xs.append(float(step))
            ys.append(float(value))
    return series
