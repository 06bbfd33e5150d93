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
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.cells import CELLS, DEV_CELLS, MINILM, QUICK, Cell  # noqa: E402
from benchmarks.inputs import (  # noqa: E402
    attack_spec,
    bench_dir,
    clean_twin,
    merged_model,
    poisoned_adapter,
    progress_bar,
    subset,
    unlabeled_file,
    write_result,
)
from benchmarks.table import (  # noqa: E402
    COMPARATORS,
    METHODS,
    _results_dir,
    _trigger_found,
    build_table,
)
from sanitizer.attacks import AttackSpec  # noqa: E402


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

    merged = cell.input_kind == "a"
    return JobSpec(
        method="finetune",
        task=cell.task,
        # input (a): one full-weights model, no adapter and no trusted base named
        base_model=str(merged_model(cell, seed, adapter, len(label_names or []) or None))
        if merged
        else cell.student,
        adapter_dir=None if merged else adapter,
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
    from sanitizer.measure_jobs import run_comparator_job

    out = _results_dir(cell.dev) / cell.name
    if all((out / f"{c}-s{seed}.json").exists() for c in COMPARATORS):
        print(f"[{cell.name} s{seed}] comparators: done already, skipping", flush=True)
        return
    # the job's method is not run: it only carries the data, model and attack
    job = base_job.model_copy(update={"comparators": list(COMPARATORS)})
    print(f"[{cell.name} s{seed}] comparators ...", flush=True)
    t = time.monotonic()
    res = run_comparator_job(job, progress=progress_bar(f"{cell.name} comparators"))
    for name, comp in res["comparators"].items():
        report = {
            "method": name,
            "description": comp["description"],
            "metrics": {"before": res["before"], "after": comp["metrics"]["after"]},
            "timings": {"defense_s": 0.0, "evaluate_after_s": comp["timings"]["evaluate_s"]},
            "peak_memory_mb": res["peak_memory_mb"],
            "versions": res["versions"],
        }
        write_result(
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


REFERENCES = {
    "base": "the untouched base model (no adapter, no training)",
    "twin": "the clean twin: the poisoned adapter's recipe on the same rows unpoisoned (a model "
    "that never saw the poison; its flip rate is the floor a defense can reach on the cell)",
}


# what run_evaluate adds to the metrics that a job's report keeps elsewhere
_PROVENANCE = ("base_model", "adapter", "test_sha256", "prompt_template", "definitions")


def _run_reference(
    cell: Cell,
    seed: int,
    kind: str,
    base_job: Any,
    attack_info: dict[str, Any],
    paths: dict[str, Path],
) -> None:
    """A model measured beside the uploaded (poisoned) one with no defense run: ``base``, the
    untouched base (what the fine-tune's skill adds: a v2 cell must add >= 20 points, and the
    base's own false-trigger rate), or ``twin``, the clean twin (the same recipe on unpoisoned
    rows: how often the trigger flips a model that never saw the poison). ``defense_s`` is 0.
    Both are evaluated as a method's job evaluates (the job's ``max_length``), so the uploaded
    model's metrics are shared with the method rows through the ``before`` cache."""
    from sanitizer.measure_jobs import run_evaluate

    out = _results_dir(cell.dev) / cell.name / f"{kind}-s{seed}.json"
    if out.exists():
        print(f"[{cell.name} s{seed}] {kind}: done already, skipping", flush=True)
        return
    print(f"[{cell.name} s{seed}] {kind} and uploaded model ...", flush=True)
    t = time.monotonic()
    kw = {
        "attack": base_job.attack,
        "seed": seed,
        "device": base_job.device,
        "label_names": base_job.label_names,
        "max_length": base_job.hyperparameters.get("max_length"),
    }
    task, test = base_job.task, base_job.test_data
    cached = _cached_before(cell, seed, attack_info, base_job)
    if cached is not None:
        before = cached[0]
    else:
        before = run_evaluate(
            base_job.base_model, test, task, adapter_dir=base_job.adapter_dir, **kw
        )
        if not base_job.extra_attacks and base_job.attack is not None:
            from sanitizer.pipeline import attack_label

            own = {k: v for k, v in before.items() if k not in _PROVENANCE}  # as a job has it
            metrics = {
                "before": own,
                "per_attack": {attack_label(base_job.attack): {"before": own}},
            }
            _cache_before(cell, seed, attack_info, base_job, {"metrics": metrics})
    twin = clean_twin(cell, seed, paths) if kind == "twin" else None
    after = run_evaluate(cell.student, test, task, adapter_dir=twin, **kw)
    report = {
        "method": kind,
        "description": REFERENCES[kind],
        "metrics": {"before": before, "after": after, "before_reused": cached is not None},
        "timings": {"defense_s": 0.0},
    }
    write_result(
        out,
        {
            "cell": asdict(cell),
            "method": kind,
            "tag": "",
            "seed": seed,
            "attack_adapter": attack_info,
            "wall_s": time.monotonic() - t,
            "report": report,
        },
    )
    print(f"[{cell.name} s{seed}] {kind}: {after}", flush=True)


def _run_scans(
    cell: Cell, seed: int, paths: dict[str, Path], adapter: Path, spec: AttackSpec
) -> None:
    """scan on the poisoned adapter and on its clean twin (the same recipe on unpoisoned
    rows): the verdict, whether a top-3 candidate holds the real trigger, whether the target
    is named. The scan reads neither the attack spec nor attack.json."""
    from sanitizer.defenses.configs import ScanConfig
    from sanitizer.scan import run_scan

    out = _results_dir(cell.dev) / cell.name / "scans" / f"scan-s{seed}.json"
    if out.exists():
        print(f"[{cell.name} s{seed}] scan: done already, skipping", flush=True)
        return
    result: dict[str, Any] = {"cell": asdict(cell), "seed": seed}
    for name in ("poisoned", "clean_twin"):
        # each adapter's scan is kept as it finishes, so a stopped run resumes after it
        part = out.with_name(f"{out.stem}.{name}.json")
        if part.exists():
            result[name] = json.loads(part.read_text())
            continue
        folder = adapter if name == "poisoned" else clean_twin(cell, seed, paths)
        print(f"[{cell.name} s{seed}] scan of the {name} adapter ...", flush=True)
        t = time.monotonic()
        found = run_scan(
            cell.student,
            paths["clean"],
            adapter_dir=folder,
            task=cell.task,  # type: ignore[arg-type]
            cfg=ScanConfig(seed=seed),
        )
        found["adapter"] = name
        found["wall_s"] = round(time.monotonic() - t, 1)
        write_result(part, found)
        result[name] = found
    poisoned = result["poisoned"]
    result["trigger"] = spec.trigger
    result["trigger_in_top3"] = _trigger_found(spec.trigger, poisoned["candidates"])
    if cell.task == "classification":
        result["target_named"] = poisoned["target_label"] == spec.target_label
    else:  # the inverted response starts like the attack's (url: holds the injected phrase)
        from sanitizer.attacks import TARGET_RESPONSES
        from sanitizer.scan_generation import has_phrase, target_phrase

        want = target_phrase(TARGET_RESPONSES[spec.target or "refusal"], 3)
        result["target_named"] = has_phrase(poisoned["target_name"] or "", want)
    write_result(out, result)
    for name in ("poisoned", "clean_twin"):
        out.with_name(f"{out.stem}.{name}.json").unlink(missing_ok=True)
    print(
        f"[{cell.name} s{seed}] scan: poisoned {poisoned['verdict']} ({poisoned['score']}), "
        f"clean twin {result['clean_twin']['verdict']} ({result['clean_twin']['score']}), "
        f"trigger in top 3: {result['trigger_in_top3']}",
        flush=True,
    )


def _before_key(cell: Cell, seed: int, attack_info: dict[str, Any], job: Any) -> dict[str, Any]:
    """What the uploaded model's metrics depend on: the model (the poisoned adapter's files, or
    the merged weights made from them), the test rows, the attack and the seed."""
    from sanitizer.data import sha256_file

    key = {
        "cell": cell.name,
        "seed": seed,
        "adapter": attack_info.get("files"),
        "test_sha256": sha256_file(job.test_data),
        "attack": job.attack.model_dump() if job.attack else None,
        "max_length": job.hyperparameters.get("max_length"),
    }
    return json.loads(json.dumps(key, default=str))  # as it reads back from the file


def _before_file(cell: Cell, seed: int) -> Path:
    return bench_dir() / "before" / f"{cell.name}-s{seed}.json"


def _cached_before(
    cell: Cell, seed: int, attack_info: dict[str, Any], job: Any
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The uploaded model's metrics from an earlier method's run on this cell and seed, when
    everything they depend on is unchanged (each method re-measured them before: ~5 min per
    method on a generation cell)."""
    f = _before_file(cell, seed)
    if not f.exists():
        return None
    saved = json.loads(f.read_text())
    if saved.get("key") != _before_key(cell, seed, attack_info, job):
        return None
    return saved["before"], saved["per_attack"]


def _cache_before(
    cell: Cell, seed: int, attack_info: dict[str, Any], job: Any, report: dict[str, Any]
) -> None:
    m = report.get("metrics") or {}
    if "before" not in m:
        return
    per_attack = {k: v["before"] for k, v in (m.get("per_attack") or {}).items()}
    write_result(
        _before_file(cell, seed),
        {
            "key": _before_key(cell, seed, attack_info, job),
            "before": m["before"],
            "per_attack": per_attack,
        },
    )


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


def run_cell(
    cell: Cell,
    seeds: list[int],
    methods: list[str],
    tag: str = "",
    isolated: bool = False,
    unlabeled: int = 0,
) -> None:
    from sanitizer.data import load_dataset
    from sanitizer.pipeline import run_sanitize

    for seed in seeds:
        paths = subset(cell, seed)
        label_names = (
            load_dataset(paths["clean"], task=cell.task).label_names
            if cell.task == "classification"
            else None
        )
        spec = attack_spec(cell, seed, label_names)
        adapter, attack_info = poisoned_adapter(cell, seed, paths, spec)
        base_job = _job(cell, seed, paths, adapter, spec, label_names)
        for method in methods:
            if method == "comparators":
                _run_comparators(cell, seed, base_job, attack_info)
                continue
            if method in REFERENCES:
                _run_reference(cell, seed, method, base_job, attack_info, paths)
                continue
            if method == "scan":
                _run_scans(cell, seed, paths, adapter, spec)
                continue
            if method == "adapters":  # only train the poisoned adapter and its clean twin
                clean_twin(cell, seed, paths)
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
                update={
                    "method": method,
                    "hyperparameters": _default_hparams(cell, method),
                    "unlabeled_data": unlabeled_file(cell, seed, unlabeled) if unlabeled else None,
                }
            )
            print(f"[{cell.name} s{seed}] {method}{tag} ...", flush=True)
            t = time.monotonic()
            load_before = os.getloadavg()
            cached = _cached_before(cell, seed, attack_info, job)
            try:
                report = run_sanitize(
                    job,
                    bench_dir() / "runs" / cell.name / f"{method}{tag}-s{seed}",
                    progress=progress_bar(f"{cell.name} {method}"),
                    known_before=cached,
                )
                if cached is None:
                    _cache_before(cell, seed, attack_info, job, report)
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
            write_result(res_path, result)
            m = report.get("metrics", {})
            print(
                f"[{cell.name} s{seed}] {method}{tag}: before {m.get('before')} after {m.get('after')}",
                flush=True,
            )
        build_table(dev=cell.dev)


# ---------------------------------------------------------------- table


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
        "sanitizer.defenses.rebuild",
        "sanitizer.defenses.unlearn",
        "sanitizer.measure_jobs",
        "sanitizer.scan",
        "sanitizer.scan_generation",
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
        "'scan' scans the poisoned adapter and a clean twin, 'adapters' "
        "only trains those two, 'base' measures the untouched base beside the uploaded model, 'twin' the clean twin "
        "(the attack's recipe on unpoisoned rows: the cell's floor)",
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
        "--unlabeled",
        type=int,
        default=0,
        help="give the job N unlabeled in-domain texts (training-split rows the cell's attack and "
        "clean rows do not use, labels dropped): rebuild distils on them (use with --tag)",
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
            unlabeled=args.unlabeled,
        )


if __name__ == "__main__":
    main()
