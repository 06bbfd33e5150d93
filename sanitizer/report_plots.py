"""The report's plots: PNGs drawn through matplotlib's Agg canvas (``Figure`` +
``FigureCanvasAgg``, never pyplot, so rendering never touches the process-wide backend and is
safe in an API worker thread), returned as base64 ``data:`` URIs."""

from __future__ import annotations

import base64
import io
from typing import Any

from sanitizer.report_data import LABELS, is_number

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


def plot_metrics(groups: list[tuple[str, dict[str, Any]]], metric_keys: list[str]) -> str | None:
    """Grouped bars: one group per metric, one bar per stage (before/after/baseline)."""
    present = [k for k in metric_keys if any(is_number(m.get(k)) for _, m in groups)]
    if not present:
        return None
    many = len(groups) > 3  # comparators beside the baseline: a wider plot, upright labels
    fig = _figure(6.4 + 0.7 * max(0, len(groups) - 3), 3.8 if many else 3.4)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(groups)
    for gi, (stage, m) in enumerate(groups):
        xs, ys = [], []
        for mi, k in enumerate(present):
            if is_number(m.get(k)):
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


def plot_losses(series: dict[str, tuple[list[float], list[float]]]) -> str | None:
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


def plot_per_attack(rows: list[dict[str, Any]]) -> str | None:
    rows = [
        r
        for r in rows
        if is_number(r["before"].get("attack_success_rate"))
        or is_number(r["after"].get("attack_success_rate"))
    ]
    if not rows:
        return None
    fig = _figure(6.4, 0.6 + 0.45 * max(3, len(rows)))
    ax = fig.add_subplot(1, 1, 1)
    for stage in ("before", "after"):
        ys, vals = [], []
        for j, r in enumerate(rows):
            v = r[stage].get("attack_success_rate")
            if is_number(v):
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
