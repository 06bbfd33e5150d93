"""Load, validate, split and write clean datasets. Torch-free.

Formats: ``.csv``, ``.jsonl`` (also ``.ndjson``) and ``.parquet`` (needs pyarrow, imported only
when a parquet file is read or written).

Tasks:

- ``classification``: a text column and a label column (names configurable). Labels are ints
  or strings. With ``label_names`` given, a label is looked up by name first, then as an integer
  index into ``label_names``. Without it, integer labels are kept as ids (``label_names`` becomes
  ``["0", "1", ...]`` up to the largest id) and string labels get ids in sorted order.
- ``generation``: Alpaca style (``instruction``, optional ``input``, ``output``) or chat style
  (``messages``: the last user turn that an assistant turn follows is the instruction, that
  assistant turn the output; with ``keep_system=True`` a system prompt is prepended to the
  instruction, separated by a blank line).

Validation collects every problem (up to ``max_problems``) before raising
``DataValidationError``; each problem names file, line (1-based line in the file; the CSV header
is line 1; for parquet it is the 1-based row number) and column, and says what to fix.

Provenance: ``Dataset.sha256`` is the sha256 of the file bytes. A derived dataset
(``with_rows``, ``split_dataset``, ``poison_dataset``) keeps the parent's ``sha256`` so reports
trace back to the file, and says how it was derived in ``note``; ``content_sha256()`` hashes the
rows themselves when a hash of the derived content is needed.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sanitizer.data_parse import parse_classification, parse_generation
from sanitizer.data_readers import Problems, decode, read_csv, read_jsonl, read_parquet
from sanitizer.data_rows import ClassificationRow, Row, Task
from sanitizer.errors import InputError

SUPPORTED_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".parquet")
DEFAULT_MIN_ROWS = 8
DEFAULT_MAX_PROBLEMS = 50


@dataclass(frozen=True)
class Dataset:
    task: Task
    rows: tuple[Row, ...]
    label_names: list[str] | None
    sha256: str
    source: str
    note: str | None = None
    # indices (into ``rows``) that an attack changed; set by sanitizer.attacks.poison_dataset
    poisoned_indices: tuple[int, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.rows)

    def with_rows(
        self,
        rows: Sequence[Row],
        note: str | None = None,
        poisoned_indices: Sequence[int] = (),
    ) -> Dataset:
        """A derived dataset: same task, labels, parent sha256 and source; new rows and a note."""
        if note is None:
            note = f"derived: {len(rows)} rows from {len(self.rows)}"
        if self.note:
            note = f"{self.note}; {note}"
        return replace(self, rows=tuple(rows), note=note, poisoned_indices=tuple(poisoned_indices))

    def content_sha256(self) -> str:
        """sha256 of the rows (canonical JSON lines), independent of the file format."""
        h = hashlib.sha256()
        for r in self.rows:
            h.update(json.dumps(_row_dict(r), sort_keys=True, ensure_ascii=False).encode())
            h.update(b"\n")
        return h.hexdigest()


def _row_dict(r: Row) -> dict[str, Any]:
    if isinstance(r, ClassificationRow):
        return {"text": r.text, "label": r.label}
    return {"instruction": r.instruction, "input": r.input, "output": r.output}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- reading records


# ---------------------------------------------------------------- task parsing


# ---------------------------------------------------------------- public API


def _read_records(
    path: Path, probs: Problems
) -> tuple[list[str], list[tuple[int, dict[str, Any]]], str]:
    """(header, records, sha256) of a .csv / .jsonl / .parquet file, problems collected; an
    unsupported type or a missing file is raised at once."""
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        probs.add(
            None,
            None,
            f"unsupported file type '{path.suffix or '(none)'}'; use .csv, .jsonl or .parquet",
        )
        probs.raise_if_any()
    if not path.is_file():
        probs.add(None, None, f"file not found: {path}; check the path")
        probs.raise_if_any()
    raw = path.read_bytes() if suffix != ".parquet" else b""
    digest = hashlib.sha256(raw).hexdigest() if raw else sha256_file(path)
    if suffix == ".parquet":
        header, records = read_parquet(path, probs)
    else:
        text = decode(raw, probs)
        if text is None:
            probs.raise_if_any()
        assert text is not None
        if suffix == ".csv":
            probs.header_line = 1
        header, records = (read_csv if suffix == ".csv" else read_jsonl)(text, probs)
    return header, records, digest


def load_texts(
    path: str | Path, text_column: str = "text", *, max_problems: int = DEFAULT_MAX_PROBLEMS
) -> tuple[list[str], str]:
    """(texts, sha256) of an unlabeled file: the ``text_column`` of every row (any other
    column, a label included, is ignored); DataValidationError lists every problem."""
    path = Path(path)
    probs = Problems(path.name, max_problems)
    header, records, digest = _read_records(path, probs)
    if header and text_column not in header:
        probs.add(None, text_column, f"no '{text_column}' column (found: {', '.join(header)})")
        probs.raise_if_any()
    texts = []
    for line, rec in records:
        value = rec.get(text_column)
        if not isinstance(value, str) or not value.strip():
            probs.add(line, text_column, "empty or missing text; remove the row or fill it in")
            continue
        texts.append(value.strip())
    if not records and not probs.full:
        probs.add(None, None, "the file has no data rows; add at least one")
    probs.raise_if_any()
    return texts, digest


def load_dataset(
    path: str | Path,
    task: Task = "classification",
    text_column: str = "text",
    label_column: str = "label",
    label_names: list[str] | None = None,
    min_rows: int = DEFAULT_MIN_ROWS,
    *,
    keep_system: bool = False,
    max_problems: int = DEFAULT_MAX_PROBLEMS,
) -> Dataset:
    """Read and validate ``path``; raise DataValidationError listing every problem found."""
    path = Path(path)
    name = path.name
    probs = Problems(name, max_problems)
    if task not in ("classification", "generation"):
        raise InputError(f"unknown task '{task}'", hint="use 'classification' or 'generation'")

    header, records, digest = _read_records(path, probs)

    names: list[str] | None = None
    rows: list[Any]
    if task == "classification":
        rows, names = parse_classification(
            header, records, probs, text_column, label_column, label_names
        )
    else:
        rows = parse_generation(header, records, probs, keep_system)

    if len(records) < min_rows and not probs.full:
        probs.add(
            None,
            None,
            f"the file has {len(records)} data row(s) but at least {min_rows} are needed; "
            "add more rows",
        )
    probs.raise_if_any()
    return Dataset(task=task, rows=tuple(rows), label_names=names, sha256=digest, source=name)


def _allocate(total: int, sizes: list[int], room: list[int]) -> list[int]:
    """Split ``total`` over groups proportionally to ``sizes`` (largest remainder), each group
    capped by ``room``."""
    n = sum(sizes)
    if total <= 0 or n == 0:
        return [0] * len(sizes)
    quotas = [total * s / n for s in sizes]
    alloc = [min(int(q), r) for q, r in zip(quotas, room, strict=True)]
    order = sorted(range(len(sizes)), key=lambda i: (-(quotas[i] - int(quotas[i])), i))
    left = total - sum(alloc)
    while left > 0:
        progressed = False
        for i in order:
            if left and alloc[i] < room[i]:
                alloc[i] += 1
                left -= 1
                progressed = True
        if not progressed:
            break
    return alloc


def split_dataset(
    ds: Dataset, dev_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0
) -> tuple[Dataset, Dataset, Dataset]:
    """Deterministic train/dev/test split (seeded ``random.Random``); stratified by label for
    classification. Each non-zero fraction gets at least one row. Rows keep file order."""
    for nm, f in (("dev_fraction", dev_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise InputError(f"{nm} must be in [0, 1), got {f}")
    n = len(ds)
    n_dev = max(1, round(n * dev_fraction)) if dev_fraction > 0 else 0
    n_test = max(1, round(n * test_fraction)) if test_fraction > 0 else 0
    if n_dev + n_test >= n:
        raise InputError(
            f"cannot split {n} rows into train/dev/test with dev_fraction={dev_fraction} and "
            f"test_fraction={test_fraction}: nothing would be left to train on",
            hint="add rows or lower the fractions",
        )
    rng = random.Random(seed)
    if ds.task == "classification":
        keys = sorted({r.label for r in ds.rows})  # type: ignore[union-attr]
        groups = [[i for i, r in enumerate(ds.rows) if r.label == k] for k in keys]  # type: ignore[union-attr]
    else:
        groups = [list(range(n))]
    for g in groups:
        rng.shuffle(g)
    sizes = [len(g) for g in groups]
    dev_alloc = _allocate(n_dev, sizes, sizes)
    test_alloc = _allocate(n_test, sizes, [s - d for s, d in zip(sizes, dev_alloc, strict=True)])
    dev_idx: list[int] = []
    test_idx: list[int] = []
    for g, d, t in zip(groups, dev_alloc, test_alloc, strict=True):
        dev_idx += g[:d]
        test_idx += g[d : d + t]
    taken = set(dev_idx) | set(test_idx)
    train_idx = [i for i in range(n) if i not in taken]

    def pick(idx: list[int], part: str) -> Dataset:
        idx = sorted(idx)
        return ds.with_rows(
            [ds.rows[i] for i in idx], note=f"{part} split (seed {seed}): {len(idx)} of {n} rows"
        )

    return pick(train_idx, "train"), pick(dev_idx, "dev"), pick(test_idx, "test")


def _label_out(ds: Dataset, label: int) -> str | int:
    if ds.label_names and 0 <= label < len(ds.label_names):
        return ds.label_names[label]
    return label


def write_dataset(ds: Dataset, path: str | Path) -> Path:
    """Write ``ds`` as CSV, JSONL or parquet (by suffix). Classification labels are written as
    their names when ``label_names`` is set, so loading the file again gives the same ids as
    long as the same ``label_names`` are passed (or every class is present)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(
            f"cannot write '{path.name}': unsupported file type; use .csv, .jsonl or .parquet"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    if ds.task == "classification":
        cols = ["text", "label"]
        recs = [{"text": r.text, "label": _label_out(ds, r.label)} for r in ds.rows]  # type: ignore[union-attr]
    else:
        cols = ["instruction", "input", "output"]
        recs = [_row_dict(r) for r in ds.rows]
    if suffix == ".csv":
        with path.open("w", encoding="utf-8", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols)
            w.writeheader()
            w.writerows(recs)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(recs), path)
    else:
        with path.open("w", encoding="utf-8") as f:
            for rec in recs:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return path
