"""The sections of the HTML report below its header and cards, one function each, in page
order (``SECTIONS``). Each reads a :class:`Page` and adds its section when it has data.
Torch-free; text is escaped as the tables are built (the template passes them as Markup).
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup

from sanitizer.report_data import (
    LABELS,
    PCT_KEYS,
    cell,
    comparator_blocks,
    is_number,
    loss_series,
    num_span,
    per_attack_rows,
)
from sanitizer.report_plots import plot_losses, plot_metrics, plot_per_attack


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


@dataclass
class Page:
    """What the sections read, and the sections they add."""

    report: dict[str, Any]
    metrics: dict[str, Any]
    before: dict[str, Any]
    after: dict[str, Any]
    baseline: dict[str, Any] | None
    bkey: str
    method: str
    sections: list[dict[str, Any]] = field(default_factory=list)
    comparators: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    per_attack: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.comparators = comparator_blocks(self.report)
        self.per_attack = per_attack_rows(self.report)

    def add(self, title: str, body: str, anchor: str) -> None:
        if body:
            self.sections.append({"title": title, "anchor": anchor, "body": Markup(body)})


def metrics_table(p: Page) -> None:
    """The before/after metrics table, with the fine-tune baseline beside it."""
    metrics = p.metrics
    before = p.before
    after = p.after
    baseline = p.baseline
    bkey = p.bkey
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
        p.add("Metrics", _table(headers, rows, {1, 2, 3, 4}), "metrics")


def plots(p: Page) -> None:
    """The metric bars, the loss curves and the per-attack bars, as embedded PNGs."""
    report = p.report
    before = p.before
    after = p.after
    baseline = p.baseline
    comparators = p.comparators
    per_attack = p.per_attack
    figs = []
    groups = [("before", before), ("after", after)]
    if baseline:
        groups.append(("baseline (fine-tune)", baseline))
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
    img = plot_per_attack(per_attack)
    if img:
        figs.append(("plot-per-attack", img, "attack success rate per attack / trigger"))
    if figs:
        p.sections.append(
            {
                "title": "Plots",
                "anchor": "plots",
                "figures": [{"id": f, "src": src, "caption": cap} for f, src, cap in figs],
            }
        )


def per_attack_table(p: Page) -> None:
    """ASR and CA per attack / trigger."""
    per_attack = p.per_attack
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
        p.add(
            "Per attack",
            _table(
                ["attack", "ASR before", "ASR after", "CA before", "CA after"],
                rows,
                {1, 2, 3, 4},
            ),
            "per-attack",
        )


def comparators_table(p: Page) -> None:
    """The zero-training comparators beside the poisoned and the sanitized model."""
    before = p.before
    after = p.after
    method = p.method
    comparators = p.comparators
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
        p.add(
            "Zero-training comparators",
            _table(
                ["model", "edit", *(LABELS.get(k, k) for k in cols)],
                rows,
                set(range(2, 2 + len(cols))),
            ),
            "comparators",
        )


def samples(p: Page) -> None:
    """A few generation responses, plain and triggered, before and after."""
    before = p.before
    after = p.after
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
        p.add(
            "Sample responses",
            _table(["stage", "kind", "prompt", "response"], samples),
            "samples",
        )


def attack_config_training(p: Page) -> None:
    """The attack used for evaluation, the run and its validated configuration, training."""
    report = p.report
    p.add("Attack used for evaluation", _kv_table(report.get("attack"), "attack"), "attack")
    keys = ("method", "method_requested", "method_reason", "task", "seed", "device", "label_names")
    run = {k: report[k] for k in keys if report.get(k) is not None}
    cfg = _kv_table(report.get("config"), "config")
    p.add(
        "Configuration",
        ("<h3>Run</h3>" + _kv_table(run, "") if run else "")
        + ("<h3>Hyperparameters (validated)</h3>" + cfg if cfg else ""),
        "config",
    )
    p.add("Training summary", _kv_table(report.get("training"), "training"), "training")
    ident = report.get("base_identification")
    if ident:
        rows = [
            [
                html.escape(str(c.get("model_id"))),
                "–" if c.get("embedding_distance") is None else f"{c['embedding_distance']:.4f}",
                "–" if c.get("distance") is None else f"{c['distance']:.4f}",
                html.escape(str(c.get("reason", ""))),
            ]
            for c in ident.get("candidates", [])
        ]
        found = ident.get("identified")
        head = (
            f"<p>The uploaded full weights were fine-tuned from <b>{html.escape(found)}</b>; "
            "it was used as the trusted base.</p>"
            if found
            else "<p>No model of this service's store matched the uploaded weights"
            + (f" ({html.escape(ident['not_used'])})" if ident.get("not_used") else "")
            + ".</p>"
        )
        table = _table(
            ["candidate", "token-embedding distance", "whole-model distance", "decision"],
            rows,
            {1, 2},
        )
        p.add("Base identification", head + table, "base-identification")


def hashes(p: Page) -> None:
    """Every model, adapter and dataset with its sha256."""
    report = p.report
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
        p.add(
            "Models, data and hashes",
            _table(["artifact", "sha256", "details"], hash_rows),
            "hashes",
        )


def timings_versions(p: Page) -> None:
    """Per-phase timings, peak memory and library versions."""
    report = p.report
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
        p.add("Timings", _table(["phase", "value"], timing_rows, {1}), "timings")
    p.add("Versions", _kv_table(report.get("versions"), "versions"), "versions")


def definitions_template(p: Page) -> None:
    """The metric definitions and the prompt template."""
    report = p.report
    metrics = p.metrics
    defs = metrics.get("definitions")
    if isinstance(defs, dict) and defs:
        p.add(
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
        p.add(
            "Prompt template (used for training and evaluation)",
            f"{head}<pre>{html.escape(str(text))}</pre>",
            "prompt-template",
        )


SECTIONS: list[Callable[[Page], None]] = [
    metrics_table,
    plots,
    per_attack_table,
    comparators_table,
    samples,
    attack_config_training,
    hashes,
    timings_versions,
    definitions_template,
]
