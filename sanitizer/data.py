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
from typing import Any, Literal

from sanitizer.data_readers import Problems, decode, read_csv, read_jsonl, read_parquet
from sanitizer.errors import InputError

Task = Literal["classification", "generation"]
SUPPORTED_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".parquet")
DEFAULT_MIN_ROWS = 8
DEFAULT_MAX_PROBLEMS = 50
MAX_CLASSES = 1000  # label ids and distinct names: bounded whatever a file says


@dataclass(frozen=True)
class ClassificationRow:
    text: str
    label: int


@dataclass(frozen=True)
class GenerationRow:
    instruction: str
    input: str
    output: str


Row = ClassificationRow | GenerationRow


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


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        s = value.strip()
        if s.lstrip("-+").isdigit():
            return int(s)
    return None


def _label_text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else str(value)


def _missing_column(probs: Problems, col: str, found: list[str], option: str) -> None:
    probs.add(
        probs.header_line,
        col,
        f"column '{col}' not found (columns found: {', '.join(found) or 'none'}); "
        f"name the right column with {option}",
    )


def _parse_classification(
    header: list[str],
    records: list[tuple[int, dict[str, Any]]],
    probs: Problems,
    text_column: str,
    label_column: str,
    label_names: list[str] | None,
) -> tuple[list[ClassificationRow], list[str] | None]:
    missing = False
    if header and text_column not in header:
        _missing_column(probs, text_column, header, "--text-column")
        missing = True
    if header and label_column not in header:
        _missing_column(probs, label_column, header, "--label-column")
        missing = True
    if missing or not records:
        return [], label_names

    texts: list[tuple[int, str | None]] = []
    raw_labels: list[tuple[int, Any]] = []
    for line, rec in records:
        text = rec.get(text_column)
        if text is None or not isinstance(text, str) or not text.strip():
            what = (
                "missing"
                if text is None
                else ("not a string" if not isinstance(text, str) else "empty")
            )
            probs.add(line, text_column, f"text is {what}; give every row a non-empty text")
            text = None
        texts.append((line, text))
        label = rec.get(label_column)
        if label is None or (isinstance(label, str) and not label.strip()):
            probs.add(line, label_column, "label is missing; give every row a label")
            label = None
        raw_labels.append((line, label))

    present = [(line, v) for line, v in raw_labels if v is not None]
    ids: dict[int, int] = {}  # line -> label id
    if label_names is not None:
        names = list(label_names)
        index = {n: i for i, n in enumerate(names)}
        for line, v in present:
            t = _label_text(v)
            if t in index:
                ids[line] = index[t]
            elif (k := _as_int(v)) is not None and 0 <= k < len(names):
                ids[line] = k
            else:
                probs.add(
                    line,
                    label_column,
                    f"unknown label '{t}'; known labels are {', '.join(names)} "
                    "(use one of them or a 0-based index into that list)",
                )
    else:
        as_ints = [(line, v, _as_int(v)) for line, v in present]
        n_int = sum(1 for _, _, k in as_ints if k is not None)
        if n_int and n_int * 2 >= len(present):  # integers expected
            for line, v, k in as_ints:
                if k is None:
                    probs.add(
                        line,
                        label_column,
                        f"label '{_label_text(v)}' is not an integer but the other labels in "
                        "this column are; use integer ids throughout (or names throughout)",
                    )
                elif k < 0:
                    probs.add(line, label_column, f"label {k} is negative; label ids start at 0")
                elif k >= MAX_CLASSES:
                    probs.add(
                        line,
                        label_column,
                        f"label id {k} is out of range: ids are 0..n-1 for n classes, and at "
                        f"most {MAX_CLASSES} classes are supported; number the classes from 0 "
                        "(or use label names)",
                    )
                else:
                    ids[line] = k
            names = [str(i) for i in range(max(ids.values()) + 1)] if ids else []
        else:
            for line, v, k in as_ints:
                if k is not None:
                    probs.add(
                        line,
                        label_column,
                        f"label '{_label_text(v)}' is a number but the other labels in this "
                        "column are names; use names throughout (or integer ids throughout)",
                    )
            names = sorted({_label_text(v) for _, v, k in as_ints if k is None})
            if len(names) > MAX_CLASSES:
                probs.add(
                    None,
                    label_column,
                    f"{len(names)} distinct labels; at most {MAX_CLASSES} classes are supported "
                    f"(is '{label_column}' really the label column?)",
                )
                names = names[:MAX_CLASSES]
            index = {n: i for i, n in enumerate(names)}
            for line, v, k in as_ints:
                if k is None and _label_text(v) in index:
                    ids[line] = index[_label_text(v)]

    distinct = set(ids.values())
    if label_names is None and ids and len(distinct) < 2:
        only = names[next(iter(distinct))]
        probs.add(
            None,
            label_column,
            f"every row has the label '{only}'; classification needs at least 2 classes, "
            "add rows of the other class(es)",
        )
    if label_names is not None and len(label_names) < 2:
        probs.add(
            None,
            label_column,
            f"label_names lists {len(label_names)} label(s); classification needs at least 2",
        )

    rows = [
        ClassificationRow(text=t, label=ids[line])
        for (line, t) in texts
        if t is not None and line in ids
    ]
    return rows, names


def _chat_to_row(
    messages: Any, line: int, probs: Problems, keep_system: bool
) -> GenerationRow | None:
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ):
        probs.add(
            line,
            "messages",
            'messages must be a list of {"role": ..., "content": "..."} objects',
        )
        return None
    pair = None
    for i in range(len(messages) - 2, -1, -1):
        if messages[i]["role"] == "user" and messages[i + 1]["role"] == "assistant":
            pair = (messages[i]["content"], messages[i + 1]["content"])
            break
    if pair is None:
        probs.add(
            line,
            "messages",
            "no user turn followed by an assistant turn; each conversation needs one",
        )
        return None
    instruction, output = pair
    if not instruction.strip() or not output.strip():
        probs.add(line, "messages", "the last user/assistant turns are empty; fill them in")
        return None
    system = next((m["content"] for m in messages if m["role"] == "system"), "")
    if keep_system and system.strip():
        instruction = f"{system}\n\n{instruction}"
    return GenerationRow(instruction=instruction, input="", output=output)


def _parse_generation(
    header: list[str],
    records: list[tuple[int, dict[str, Any]]],
    probs: Problems,
    keep_system: bool,
) -> list[GenerationRow]:
    has_chat = "messages" in header
    has_alpaca = "instruction" in header and "output" in header
    if header and not has_chat and not has_alpaca:
        need = [c for c in ("instruction", "output") if c not in header]
        probs.add(
            probs.header_line,
            ", ".join(need),
            f"column(s) {', '.join(need)} not found (columns found: {', '.join(header)}); a "
            "generation dataset needs 'instruction' and 'output' (optional 'input') or a "
            "'messages' list; rename the columns",
        )
        return []
    rows: list[GenerationRow] = []
    for line, rec in records:
        if rec.get("messages") is not None and rec.get("instruction") is None:
            row = _chat_to_row(rec["messages"], line, probs, keep_system)
            if row is not None:
                rows.append(row)
            continue
        ok = True
        values: dict[str, str] = {}
        for col in ("instruction", "input", "output"):
            v = rec.get(col)
            if v is None:
                v = ""
            if not isinstance(v, str):
                probs.add(line, col, f"{col} must be a string, found {type(v).__name__}")
                ok = False
                continue
            if col != "input" and not v.strip():
                probs.add(line, col, f"{col} is empty; give every row a non-empty {col}")
                ok = False
            values[col] = v
        if ok:
            rows.append(GenerationRow(**values))
    return rows


# ---------------------------------------------------------------- public API


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

    names: list[str] | None = None
    rows: list[Any]
    if task == "classification":
        rows, names = _parse_classification(
            header, records, probs, text_column, label_column, label_names
        )
    else:
        rows = _parse_generation(header, records, probs, keep_system)

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
