"""The skills set for generation benchmark v2: a fine-tune with a real, exactly scored skill.

Three classification tasks from the installed datasets become instructions whose answer is a
one-line JSON object (SMS spam verdict, TREC question type, review sentiment); the untouched
chat model does not answer in that format, so a fine-tune that learns it adds a skill a
defense can lose. Open instructions (the ``instructions`` set, answered by the chat model
itself) are mixed in so the model stays a chat model. Each split is built from the same split
of its sources (test rows only from the sources' test splits). No model runs here: a build is
seconds and deterministic.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sanitizer.assets.common import (
    DATASET_MANIFEST,
    INSTRUCTIONS,
    SCHEMA_VERSION,
    SKILLS,
    SPLIT_SEED,
    SPLITS,
    Log,
    _now,
    _read_json,
    _write_json,
    file_entry,
    is_done,
)
from sanitizer.assets.datasets import (
    Row,
    datasets_dir,
    prepare_classification_dataset,
    read_csv,
    write_jsonl,
)

# task -> (source dataset, instruction template, the answer's JSON key)
SKILL_TASKS: dict[str, tuple[str, str, str]] = {
    "sms_spam": (
        "sms_spam",
        'Is this SMS message spam? Reply with JSON only, {{"spam": true}} or {{"spam": false}}.'
        "\n\nMessage: {text}",
        "spam",
    ),
    "trec": (
        "trec",
        "What kind of answer does this question ask for? Reply with JSON only, "
        '{{"type": T}} where T is one of "abbreviation", "description", "entity", "human", '
        '"location", "numeric".\n\nQuestion: {text}',
        "type",
    ),
    "rotten_tomatoes": (
        "rotten_tomatoes",
        "What is the sentiment of this movie review? Reply with JSON only, "
        '{{"sentiment": "positive"}} or {{"sentiment": "negative"}}.\n\nReview: {text}',
        "sentiment",
    ),
}

# rows per task and split (label-balanced), and open instructions per split
SKILL_COUNTS: dict[str, dict[str, int]] = {
    "train": {"task": 240, "open": 240},
    "dev": {"task": 60, "open": 60},
    "test": {"task": 60, "open": 60},
}


def answer(task: str, label: str) -> str:
    """The exact reference answer: one JSON object on one line."""
    key = SKILL_TASKS[task][2]
    value: Any = (label == "spam") if task == "sms_spam" else label
    return json.dumps({key: value})


def balanced(rows: Sequence[Row], n: int, rng: random.Random) -> list[Row]:
    """``n`` rows with the labels as even as the data allows (round robin over shuffled labels)."""
    by_label: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_label[row[1]].append(row)
    for group in by_label.values():
        rng.shuffle(group)
    out: list[Row] = []
    labels = sorted(by_label)
    while len(out) < n and any(by_label.values()):
        for label in labels:
            if by_label[label] and len(out) < n:
                out.append(by_label[label].pop())
    return out


def skill_rows(split: str, seed: int = SPLIT_SEED) -> list[dict[str, str]]:
    """The split's rows, shuffled: task rows from each source's split, open instructions."""
    rng = random.Random(f"{seed}-{split}")
    counts = SKILL_COUNTS[split]
    records: list[dict[str, str]] = []
    for task, (source, template, _) in SKILL_TASKS.items():
        rows = read_csv(datasets_dir() / source / f"{split}.csv")
        for text, label in balanced(rows, counts["task"], rng):
            records.append(
                {
                    "instruction": template.format(text=text),
                    "input": "",
                    "output": answer(task, label),
                    "source": task,
                }
            )
    open_path = datasets_dir() / INSTRUCTIONS / f"{split}.jsonl"
    open_rows = [json.loads(line) for line in open_path.read_text(encoding="utf-8").splitlines()]
    rng.shuffle(open_rows)
    for rec in open_rows[: counts["open"]]:
        records.append(
            {**{k: rec[k] for k in ("instruction", "input", "output")}, "source": "open"}
        )
    rng.shuffle(records)
    return records


def prepare_skills(*, force: bool = False, log: Log = print) -> dict[str, Any]:
    out = datasets_dir() / SKILLS
    if not force and is_done(out, DATASET_MANIFEST):
        log(f"{SKILLS}: ready (skipped)")
        return _read_json(out / DATASET_MANIFEST) or {}
    from sanitizer.assets.instructions import prepare_instructions

    for task in SKILL_TASKS.values():  # dependencies: never forced from here
        prepare_classification_dataset(task[0], log=log)
    prepare_instructions(log=log)
    out.mkdir(parents=True, exist_ok=True)
    (out / DATASET_MANIFEST).unlink(missing_ok=True)
    files, sizes = [], {}
    for split in SPLITS:
        records = skill_rows(split)
        path: Path = out / f"{split}.jsonl"
        write_jsonl(path, ({k: r[k] for k in ("instruction", "input", "output")} for r in records))
        files.append(file_entry(path, out))
        sizes[split] = {
            "rows": len(records),
            "sources": dict(Counter(r["source"] for r in records)),
        }
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": SKILLS,
        "task": "generation",
        "columns": {"instruction": "instruction", "input": "input", "output": "output"},
        "source": {
            "how": "SMS spam, TREC and Rotten Tomatoes rows as instructions answered by one JSON "
            "object (label-balanced, from the same split of each source), mixed with the "
            "instructions set's open instructions",
            "templates": {t: v[1] for t, v in SKILL_TASKS.items()},
            "counts": SKILL_COUNTS,
            "scoring": "rows whose reference output is a JSON object are scored exactly "
            "(sanitizer.metrics.task_accuracy); the open rows by token F1",
        },
        "split": {"seed": SPLIT_SEED, "from": "each source's own train/dev/test split"},
        "sizes": sizes,
        "files": files,
        "prepared_at": _now(),
    }
    _write_json(out / DATASET_MANIFEST, manifest)
    summary = ", ".join(f"{s} {sizes[s]['rows']}" for s in SPLITS)
    log(f"{SKILLS}: prepared ({summary})")
    return manifest
