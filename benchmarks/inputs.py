"""What every benchmark row starts from, written once and reused: the cell's data subsets, its
poisoned adapter and the adapter's clean twin (in the cache outside git); and the progress bar
and atomic result writes the runs share."""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from pathlib import Path
from typing import Any

from benchmarks.cells import Cell
from sanitizer.attacks import AttackSpec
from sanitizer.hub import cache_dir


def bench_dir() -> Path:
    return cache_dir() / "benchmarks"


def subset(cell: Cell, seed: int) -> dict[str, Path]:
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


def unlabeled_file(cell: Cell, seed: int, n: int) -> Path:
    """``n`` texts of the dataset's training split that the cell's attack and clean rows do not
    use (the same shuffle as ``subset``), labels dropped: a defender's own unlabeled in-domain
    data. Classification cells only."""
    import csv

    from sanitizer.assets import dataset_path
    from sanitizer.data import load_dataset

    out = (
        bench_dir()
        / "data"
        / f"{cell.dataset}-unlabeled-a{cell.attack_rows}-c{cell.clean_rows}-n{n}-s{seed}.csv"
    )
    if out.exists():
        return out
    rows = list(load_dataset(dataset_path(cell.dataset, "train"), task=cell.task).rows)
    random.Random(seed).shuffle(rows)
    used = cell.attack_rows + cell.clean_rows
    if len(rows) < used + n:
        raise SystemExit(f"{cell.dataset} has {len(rows) - used} unused training rows, not {n}")
    tmp = out.with_name(f"{out.name}.partial-{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        w.writerows([r.text] for r in rows[used : used + n])
    tmp.rename(out)
    return out


def attack_spec(cell: Cell, seed: int, label_names: list[str] | None) -> AttackSpec:
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


def attack_train_config(cell: Cell, seed: int) -> Any:
    """The attacker's training recipe for the cell: its poisoned adapter and clean twin."""
    from sanitizer.attack_train import AttackTrainConfig

    cls = cell.task == "classification"
    return AttackTrainConfig(
        epochs=cell.attack_epochs,
        learning_rate=cell.attack_lr,
        seed=seed,
        max_length=64 if cls else 160,
        batch_size=16 if cls else 8,
        target_modules="attention" if cls else "all-linear",
    )


def poisoned_adapter(
    cell: Cell, seed: int, paths: dict[str, Path], spec: AttackSpec
) -> tuple[Path, dict[str, Any]]:
    from sanitizer.attack_train import run_attack

    # an input-(a) cell shares its (b) twin's adapter: the same recipe, merged afterwards
    out = bench_dir() / "adapters" / f"{cell.name.removesuffix('-merged')}-s{seed}"
    if (out / "attack.json").exists():
        return out, json.loads((out / "attack.json").read_text())
    cfg = attack_train_config(cell, seed)
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
        progress=progress_bar(f"{cell.name} attack"),
    )
    return out, info


def save_merged(cell: Cell, adapter: Path, out: Path, num_labels: int | None = None) -> Path:
    """``adapter`` merged into the cell's student, saved as a safetensors model folder ``out``."""
    from sanitizer.models import attach_adapter, load_model, merge_adapter

    lm = load_model(cell.student, cell.task, num_labels=num_labels, device="cpu")
    attach_adapter(lm, adapter)
    merge_adapter(lm)
    lm.model.save_pretrained(out, safe_serialization=True)
    lm.tokenizer.save_pretrained(out)
    return out


def merged_model(cell: Cell, seed: int, adapter: Path, num_labels: int | None = None) -> Path:
    """Input (a): the poisoned adapter merged into full weights, saved as one safetensors model
    folder (written once, in a private folder renamed into place). The defense gets this folder
    as its model and no adapter: nothing tells it which weights are the trusted base."""
    out = bench_dir() / "merged" / f"{cell.name}-s{seed}"
    if (out / "config.json").exists():
        return out
    tmp = save_merged(cell, adapter, out.with_name(f"{out.name}.partial-{os.getpid()}"), num_labels)
    try:
        tmp.rename(out)
    except OSError:  # another run wrote the same folder first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def progress_bar(desc: str):
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


def clean_twin(cell: Cell, seed: int, paths: dict[str, Path]) -> Path:
    """The poisoned adapter's recipe on the unpoisoned rows: what a scan must call clean."""
    from sanitizer.attack_train import run_attack

    twin = bench_dir() / "adapters" / f"{cell.name.removesuffix('-merged')}-s{seed}-clean"
    if not (twin / "attack.json").exists():
        print(f"[{cell.name} s{seed}] training the clean twin adapter", flush=True)
        run_attack(
            cell.student,
            paths["attack"],
            cell.task,
            None,
            twin,
            attack_train_config(cell, seed),
            progress=progress_bar(f"{cell.name} clean twin"),
        )
    return twin


def write_result(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str))
    tmp.replace(path)
