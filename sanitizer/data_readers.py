"""Reading a dataset file into records, every problem collected with its line and column: CSV, JSON lines, Parquet (pyarrow, imported lazily). Torch-free."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from sanitizer.errors import DataValidationError, Problem


class Problems:
    """Collects problems up to a cap; raising happens at the end of loading."""

    def __init__(self, file: str, cap: int) -> None:
        self.file, self.cap = file, cap
        self.items: list[Problem] = []
        self.header_line: int | None = None  # 1 for CSV: missing columns point at the header

    def add(self, line: int | None, column: str | None, message: str) -> None:
        if len(self.items) < self.cap:
            self.items.append(Problem(self.file, line, column, message))

    @property
    def full(self) -> bool:
        return len(self.items) >= self.cap

    def raise_if_any(self) -> None:
        if self.items:
            raise DataValidationError(
                self.items, hint="fix the listed rows or columns and upload the file again"
            )


def decode(raw: bytes, probs: Problems) -> str | None:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        offset = exc.start
        line = raw.count(b"\n", 0, offset) + 1
        probs.add(
            line,
            None,
            f"file is not UTF-8 (byte 0x{raw[offset]:02x} at offset {offset}); re-save it as UTF-8",
        )
        return None


def read_csv(text: str, probs: Problems) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    csv.field_size_limit(1 << 26)
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[tuple[int, dict[str, Any]]] = []
    header: list[str] = []
    prev_end = 0
    try:
        for fields in reader:
            start = prev_end + 1
            prev_end = reader.line_num
            if not header:
                if not fields:
                    continue
                header = [h.strip() for h in fields]
                continue
            if not fields or all(not f.strip() for f in fields):
                continue  # blank line
            if len(fields) != len(header):
                probs.add(
                    start,
                    None,
                    f"expected {len(header)} fields ({', '.join(header)}) but found "
                    f"{len(fields)}; quote fields that contain commas or line breaks",
                )
                continue
            records.append((start, dict(zip(header, fields, strict=True))))
    except csv.Error as exc:
        probs.add(prev_end + 1, None, f"malformed CSV ({exc}); check the quoting on this line")
    if not header:
        probs.add(1, None, "the file is empty; a CSV needs a header line and data rows")
    return header, records


def read_jsonl(text: str, probs: Problems) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    records: list[tuple[int, dict[str, Any]]] = []
    seen: dict[str, None] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except RecursionError:
            probs.add(lineno, None, "JSON nested too deeply; each line must be one flat object")
            continue
        except json.JSONDecodeError as exc:
            probs.add(
                lineno,
                None,
                f"malformed JSON ({exc.msg} at character {exc.colno}); each line must be one "
                "JSON object",
            )
            continue
        if not isinstance(obj, dict):
            probs.add(
                lineno,
                None,
                f"expected a JSON object, found {type(obj).__name__}; each line must be one "
                'JSON object like {"text": ..., "label": ...}',
            )
            continue
        for k in obj:
            seen.setdefault(k, None)
        records.append((lineno, obj))
    return list(seen), records


def read_parquet(path: Path, probs: Problems) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        probs.add(
            None,
            None,
            "reading .parquet needs pyarrow (pip install pyarrow); or convert the file to CSV "
            "or JSONL",
        )
        return [], []
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        probs.add(None, None, f"cannot read parquet file ({exc}); re-export it")
        return [], []
    return list(table.column_names), [(i, r) for i, r in enumerate(table.to_pylist(), start=1)]
