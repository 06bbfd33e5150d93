"""The benchmark's tables (docs/BENCHMARKS.md, docs/DEV_RESULTS.md, benchmarks/results.json),
rebuilt from the finished results in benchmarks/results/."""

from __future__ import annotations

import json
import os
import statistics
from pathlib import Path
from typing import Any

from benchmarks.cells import CELLS
from sanitizer.attacks import SYNTACTIC_TEMPLATE
from sanitizer.defenses.registry import method_names

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEV_RESULTS = REPO / "benchmarks" / "dev_results"  # development cells: kept out of the table
METHODS = method_names()  # finetune, w2sdefense, crow, rebuild, unlearn, beear: the registry
# the summary also shows `auto` (what a user who leaves the method alone gets, and what it chose)
SUMMARY_METHODS = (*METHODS, "auto")
_TITLES = {"w2sdefense": "W2SDefense", "crow": "CROW", "beear": "BEEAR-style"}
# zero-training comparators (docs/METHODS_NOTES.md): one job measures all three on the poisoned model
COMPARATORS = ("prune", "int8", "int4")


def _results_dir(dev: bool) -> Path:
    return DEV_RESULTS if dev else RESULTS


def _trigger_found(trigger: str | None, candidates: list[dict[str, Any]]) -> bool:
    """A top-3 candidate holds the real trigger, or at least half of its words."""
    if not trigger or trigger == SYNTACTIC_TEMPLATE:  # a template, not words to find
        return False
    words = {w.lower() for part in trigger.split("|") for w in part.split()}
    for c in candidates[:3]:
        got = {w.lower() for w in str(c.get("trigger", "")).split()}
        if len(words & got) >= max(1, len(words) / 2):
            return True
    return False


def _search(scan: dict[str, Any]) -> str:
    """How the scan searched: staged (since 2026-12-06) or per label; the trigger after CLS
    ('first') or at random word starts."""
    cfg = scan.get("config") or {}
    staged = "staged" if "screen_steps" in cfg else "per label"
    short = ", shortened" if cfg.get("shorten_keep") else ""
    return f"{staged}, {cfg.get('search_position', 'first')}{short}"


def _scan_table(dev: bool) -> list[str]:
    files = sorted(  # scan-s0.json; not the per-adapter parts of an unfinished one
        f for f in _results_dir(dev).glob("*/scans/scan-s*.json") if f.name.count(".") == 1
    )
    out = [
        "## Scan (no trigger knowledge): detection on the poisoned adapter and its clean twin",
        "",
        "`python benchmarks/run.py --cells CELL --methods scan`: the poisoned adapter and a clean",
        "twin trained by the same recipe on the unpoisoned rows are scanned with the defaults;",
        "flip = the top candidate's flip rate, lift = flip minus random tokens' flip rate;",
        "search = how the scan searched (sanitizer/scan.py): 'staged' screens every label and",
        "searches the easiest fully; 'first' puts the trigger after CLS during the search,",
        "'random' at a random word start per row (the default since 2026-12-06); 'shortened':",
        "flagged candidates also given in their shortest form (docs/METHODS_NOTES.md, scan).",
        "",
    ]
    if not files:
        return [*out, "No scans recorded yet.", ""]
    out += [
        "| cell | seed | search | poisoned: verdict (flip / lift) | top candidate → target | real trigger in top 3 | target named | clean twin: verdict (flip / lift) | scan s (poisoned / twin) | rows through the model (poisoned / twin) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    n = flagged = twins_flagged = found = named = 0
    # a clean twin is the attack's recipe on the cell's unpoisoned attack rows, which depend on
    # the dataset, the model and the seed, not on the trigger: cells that differ only in the
    # trigger scan the same twin, so false positives are counted over distinct twins
    twins: dict[tuple[str, str, int], bool] = {}
    for f in files:
        r = json.loads(f.read_text())
        p, c = r["poisoned"], r["clean_twin"]
        cell = r["cell"]
        key = (str(cell.get("dataset")), str(cell.get("student")), int(r["seed"]))
        twins[key] = twins.get(key, False) or c["verdict"] == "backdoor"

        def v(x: dict[str, Any]) -> str:
            top = (x.get("candidates") or [{}])[0]
            lift = top.get("lift")
            return (
                f"{x['verdict']} ({100 * top.get('flip_rate', 0):.0f}% / "
                f"{'–' if lift is None else f'{100 * lift:.0f}'})"
            )

        top = (p.get("candidates") or [{}])[0]
        out.append(
            f"| {r['cell']['name']} | {r['seed']} | {_search(p)} | {v(p)} | `{top.get('trigger', '')}` → "
            f"{top.get('target_name', '')} | {'yes' if r['trigger_in_top3'] else 'no'} "
            f"(`{r['trigger']}`) | {'yes' if r['target_named'] else 'no'} | {v(c)} | "
            f"{p.get('wall_s', 0):.0f} / {c.get('wall_s', 0):.0f} | "
            f"{p.get('forwards', '–')} / {c.get('forwards', '–')} |"
        )
        n += 1
        flagged += p["verdict"] == "backdoor"
        twins_flagged += c["verdict"] == "backdoor"
        found += bool(r["trigger_in_top3"])
        named += bool(r["target_named"])
    out += [
        "",
        f"Poisoned adapters flagged: {flagged}/{n}; real trigger in a top-3 candidate: {found}/{n}; "
        f"target named: {named}/{n}; clean twins flagged (false positives): {twins_flagged}/{n} "
        f"scans, {sum(twins.values())}/{len(twins)} distinct clean twins (dataset, model, seed). "
        "Wall times are one torch thread with other benchmark processes sharing the 2 cores.",
    ]
    return [*out, ""]


def _fmt(values: list[float]) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


Rows = dict[tuple[str, str], list[dict[str, Any]]]


def _asr(m: dict[str, Any]) -> float:
    return m.get("attack_success_rate", float("nan"))


def _ca(m: dict[str, Any]) -> float:
    """Classification: clean accuracy; generation v2 (skills): exact task accuracy; the older
    generation cells: utility token F1."""
    if "clean_accuracy" in m:
        return m["clean_accuracy"]
    return m.get("task_accuracy", m.get("utility_token_f1", float("nan")))


def _finished(rows: Rows, cell: str, method: str) -> list[dict[str, Any]]:
    """The (cell, method) results that finished (a failed run has no metrics)."""
    return [r for r in rows.get((cell, method), []) if "metrics" in r["report"]]


def _methods(rows: Rows, cell: str) -> list[str]:
    """The cell's methods, the defaults first, then the comparators, then the variants."""
    return sorted(
        {k[1] for k in rows if k[0] == cell},
        key=lambda m: (m not in METHODS, m not in COMPARATORS, m),
    )


def _poisoned(rows: Rows, cell: str) -> list[dict[str, Any]]:
    """The results whose ``before`` metrics stand for the poisoned model (every method of a seed
    shares one adapter): those of the method that ran on the most seeds, a default on a tie."""
    return max((_finished(rows, cell, m) for m in _methods(rows, cell)), key=len, default=[])


def _ca_change(runs: list[dict[str, Any]]) -> float:
    """Mean CA (utility) change of a method's runs, each against its own ``before``: the poisoned
    model of the same seed, so a method run on fewer seeds than the cell's ``none`` row is not
    compared with other seeds' poisoned models."""
    m = [r["report"]["metrics"] for r in runs]
    return statistics.mean(_ca(x["after"]) - _ca(x["before"]) for x in m)


def _meets_bar(runs: list[dict[str, Any]]) -> bool:
    """The issue's bar: mean ASR ≤ 5% and mean CA (utility) at most 1 point below the poisoned
    model's, seed by seed (1e-9 absorbs float error at exactly 1 point)."""
    asr = statistics.mean(_asr(r["report"]["metrics"]["after"]) for r in runs)
    return asr <= 0.05 + 1e-9 and _ca_change(runs) >= -0.01 - 1e-9


def _recorded_mean(key: str, ms: list[dict[str, Any]]) -> float | None:
    """The mean of ``key`` over the metrics ``ms`` in percent, None unless every one has it (a
    metric recorded since some date: a mean over part of the seeds would mislead)."""
    vals = [m[key] for m in ms if key in m]
    return 100 * statistics.mean(vals) if ms and len(vals) == len(ms) else None


def _twin_cell(after: list[dict[str, Any]]) -> str:
    """The clean twin's ASR / flip rate (mean over its seeds), `–` where it was not measured."""
    if not after:
        return "–"
    flip = _recorded_mean("flip_rate", after)
    flip_s = "–" if flip is None else f"{flip:.1f}"
    return f"{100 * statistics.mean(_asr(a) for a in after):.1f} / {flip_s} [{len(after)}]"


def _summary(rows: Rows) -> list[str]:
    """One line per cell of the minimum matrix (``CELLS``): the poisoned model, the finetune
    baseline and each defense's default row against the bar, ``not run`` where a default row
    is missing — the matrix's state at a glance, above the full table."""
    out = [
        "## The minimum matrix against the bar",
        "",
        "Default rows only (no variants, no `-old-selection` rows); ASR / CA change in points",
        "(each run against the poisoned model of its own seed), mean over the seeds in brackets.",
        "✔ = ASR ≤ 5% and CA drop ≤ 1 point; ✘ = missed.",
        "A defense's FTR (its ASR formula on untriggered inputs, where recorded) is the floor its",
        "ASR cannot go below: a model that errs on 8% of clean positives reads ≥ 8% ASR with no",
        "backdoor at all (see Metrics below).",
        "",
        "`clean twin` = the attack's recipe on the same rows unpoisoned: its ASR and flip rate are",
        "what the trigger does to a model that never saw the poison (`–` where not measured).",
        "",
        "| cell | poisoned ASR / CA | clean twin ASR / flip | finetune ASR | "
        + " | ".join(f"{_TITLES.get(m, m)} ASR / ΔCA" for m in SUMMARY_METHODS if m != "finetune")
        + " |",
        "|---" * (3 + len(SUMMARY_METHODS)) + "|",
    ]

    def mean(vals: list[float]) -> float:
        return 100 * statistics.mean(vals)

    for cell in (c.name for c in CELLS):
        poisoned = _poisoned(rows, cell)
        if not poisoned:
            out.append(f"| {cell} |" + " not run |" * (2 + len(SUMMARY_METHODS)))
            continue
        before = [r["report"]["metrics"]["before"] for r in poisoned]
        b_asr, b_ca = mean([_asr(b) for b in before]), mean([_ca(b) for b in before])
        bar = b_asr >= 90
        cols = [f"{b_asr:.1f} / {b_ca:.1f} [{len(before)}]" + ("" if bar else " (attack < 90%)")]
        cols.append(
            _twin_cell([r["report"]["metrics"]["after"] for r in _finished(rows, cell, "twin")])
        )
        for m in SUMMARY_METHODS:
            runs = _finished(rows, cell, m)
            if not runs:
                cols.append("not run")
                continue
            after = [r["report"]["metrics"]["after"] for r in runs]
            a_asr, d_ca = mean([_asr(a) for a in after]), 100 * _ca_change(runs)
            if m == "finetune":
                cols.append(f"{a_asr:.1f} [{len(after)}]")
                continue
            mark = (" ✔" if _meets_bar(runs) else " ✘") if bar else ""
            ftr, flip = (
                _recorded_mean("false_trigger_rate", after),
                _recorded_mean("flip_rate", after),
            )
            floor = "" if ftr is None else f" (FTR {ftr:.1f})"
            floor += "" if flip is None else f" flip {flip:.1f}"
            if m == "auto":  # what it chose, e.g. rebuild on a base found from the weights
                floor += " → " + "/".join(sorted({r["report"].get("method", "?") for r in runs}))
            cols.append(f"{a_asr:.1f}{floor} / {d_ca:+.1f} [{len(after)}]{mark}")
        out.append(f"| {cell} | " + " | ".join(cols) + " |")
    return [*out, ""]


def _cost_table(rows: Rows) -> list[str]:
    """The cost bar (W2SDefense ≤ 1.5×, CROW ≤ 2.5× finetune's wall time) from runs made with
    ``--isolated`` only: per cell and seed, the three default methods each timed alone on the
    machine, so the ratio compares like with like (the `× ft` column of the full table mixes
    runs made under different loads)."""
    iso: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for (cell, method), rs in rows.items():
        if method not in METHODS:
            continue
        for r in rs:
            if "metrics" in r["report"] and r.get("timing", {}).get("isolated"):
                iso.setdefault((cell, r["seed"]), {})[method] = r
    out = [
        "## Cost, each method timed alone",
        "",
        "Defense wall time (`timings.defense_s`: training, per-epoch clean-dev evaluation and, for",
        "W2SDefense, its teacher) of runs made with `--isolated`: nothing else ran on the machine,",
        "and the 1-minute load average at each run's start and end is recorded in its JSON.",
        "Bar: W2SDefense ≤ 1.5×, CROW ≤ 2.5× finetune on the same cell and seed.",
        "",
    ]
    if not iso:
        return [*out, "No isolated runs recorded yet.", ""]
    out += [
        "| cell | seed | threads | finetune s | W2SDefense s (× ft) | CROW s (× ft) |",
        "|---|---|---|---|---|---|",
    ]
    for (cell, seed), by in sorted(iso.items()):
        ft = by.get("finetune")
        ft_s = ft["report"]["timings"]["defense_s"] if ft else None
        cols = [f"{ft_s:.0f}" if ft_s else "not run"]
        for m, bar in (("w2sdefense", 1.5), ("crow", 2.5)):
            if m not in by:
                cols.append("not run")
                continue
            s = by[m]["report"]["timings"]["defense_s"]
            ratio = s / ft_s if ft_s else None
            mark = "" if ratio is None else (" ✔" if ratio <= bar else " ✘")
            cols.append(f"{s:.0f}" + (f" ({ratio:.2f}×){mark}" if ratio else ""))
        threads = next(iter(by.values()))["timing"]["torch_threads"]
        out.append(f"| {cell} | {seed} | {threads} | " + " | ".join(cols) + " |")
    return [*out, ""]


def build_table(dev: bool = False) -> None:
    """docs/BENCHMARKS.md + benchmarks/results.json from benchmarks/results/, or with ``dev``
    docs/DEV_RESULTS.md from benchmarks/dev_results/ (the development cells)."""
    rows: Rows = {}
    for f in sorted(_results_dir(dev).glob("*/*.json")):
        r = json.loads(f.read_text())
        rows.setdefault((r["cell"]["name"], r["method"] + r.get("tag", "")), []).append(r)
    if not dev:
        (REPO / "benchmarks" / "results.json").write_text(
            json.dumps({f"{k[0]}/{k[1]}": v for k, v in rows.items()}, indent=1, default=str)
        )
    lines = [
        "# Development results (choosing defaults; not the benchmark)" if dev else "# Benchmarks",
        "",
        "Generated by `python benchmarks/run.py` (see its docstring); every number below is from a run",
        f"recorded in `benchmarks/{'dev_results' if dev else 'results'}/`. ASR and CA in %, mean ± sample std over the seeds listed.",
        "`none` is the poisoned model before any defense. Generation cells: CA column = utility",
        "(unigram F1 of the greedy clean response vs the reference output), ASR = keyword ASR on triggered prompts;",
        "benchmark v2 cells (`skills-*`): CA column = task accuracy (the greedy response's JSON answer equals the",
        "reference exactly, on the task rows); `base` = the untouched base model; `-merged` = input (a), the",
        "adapter merged into full weights and no trusted base given to the defense. `twin` = the clean twin:",
        "the attack's recipe on the same rows unpoisoned, so its flip rate is how often the trigger flips a",
        "model that never saw the poison (the floor a defense can reach on that cell).",
        "",
        "FTR = false trigger rate: the ASR formula on clean, untriggered inputs (recorded for",
        "classification since 2026-11-23; `–` where a result predates it). ASR far above FTR is what",
        "makes a backdoor; a cell whose FTR is close to its ASR has no trigger-specific backdoor.",
        "`target` = the issue's bar for a defense on a cell whose attack reached ASR ≥ 90%: ASR ≤ 5%",
        "and CA (utility) at most 1 point below the poisoned model's; `× ft` = defense wall time",
        "over `finetune`'s on the same cell (the bar: W2SDefense ≤ 1.5×, CROW ≤ 2.5×).",
        "",
        "Flip = flip rate: of the non-target inputs the model gets right untriggered, the share the",
        "trigger turns into the target (recorded since 2026-12-05; `–` where a result predates it).",
        "",
        "| cell | method | seeds | ASR | FTR | flip | CA | target | wall s (defense) | × ft | peak MB | sizes (attack/clean/test) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def recorded(key: str, ms: list[dict[str, Any]]) -> str:
        vals = [m[key] for m in ms if key in m]
        return _fmt(vals) if len(vals) == len(ms) else "–"

    def ftr(ms: list[dict[str, Any]]) -> str:
        return recorded("false_trigger_rate", ms) + " | " + recorded("flip_rate", ms)

    def sizes(r: dict[str, Any]) -> str:
        c = r["cell"]
        return f"{c['attack_rows']}/{c['clean_rows']}/{c['test_rows']}"

    if not dev:
        lines[-2:-2] = [*_summary(rows), *_cost_table(rows), "## All rows", ""]
    cells = sorted({k[0] for k in rows})
    for cell in cells:
        methods = _methods(rows, cell)
        ok = _poisoned(rows, cell)
        before = [r["report"]["metrics"]["before"] for r in ok]
        attacked = bool(before) and statistics.mean(_asr(b) for b in before) >= 0.9
        if ok:
            lines.append(
                f"| {cell} | none | {','.join(str(r['seed']) for r in ok)} | "
                f"{_fmt([_asr(b) for b in before])} | {ftr(before)} | {_fmt([_ca(b) for b in before])} | "
                f"{'attack ≥ 90%' if attacked else 'attack < 90%: no bar'} | – | – | – | {sizes(ok[0])} |"
            )
        ft = _finished(rows, cell, "finetune")
        ft_s = statistics.mean(r["report"]["timings"]["defense_s"] for r in ft) if ft else None
        for method in methods:
            good = _finished(rows, cell, method)
            if not good:
                lines.append(
                    f"| {cell} | {method} | – | failed | – | – | failed | – | – | – | – | – |"
                )
                continue
            after = [r["report"]["metrics"]["after"] for r in good]
            base = method.split("-", 1)[0]  # a variant's rows are method + tag ("crow-continue")
            met = "–"
            if method in COMPARATORS:
                met = "comparator"
            elif method == "base":
                met = "untouched base"
            elif method == "twin":
                met = "clean twin (floor)"
            elif attacked and base != "finetune":
                met = "met" if _meets_bar(good) else "missed"
            wall = statistics.mean(r["report"]["timings"]["defense_s"] for r in good)
            ratio = (
                f"{wall / ft_s:.1f}"
                if ft_s and base not in ("finetune", "base", "twin", *COMPARATORS)
                else "–"
            )
            lines.append(
                f"| {cell} | {method} | {','.join(str(r['seed']) for r in good)} | "
                f"{_fmt([_asr(a) for a in after])} | {ftr(after)} | {_fmt([_ca(a) for a in after])} | {met} | "
                f"{wall:.0f} | {ratio} | "
                f"{max(r['report'].get('peak_memory_mb', 0) for r in good):.0f} | {sizes(good[0])} |"
            )
    lines += ["", *_scan_table(dev)]
    lines += [
        "",
        "Machine: " + os.environ.get("BENCH_MACHINE", "2-core x86_64 CPU, fp32, torch threads = 2"),
        "",
    ]
    notes = REPO / "benchmarks" / "NOTES.md"
    if notes.exists() and not dev:
        lines += [notes.read_text()]
    out = REPO / "docs" / ("DEV_RESULTS.md" if dev else "BENCHMARKS.md")
    out.write_text("\n".join(lines) + "\n")
