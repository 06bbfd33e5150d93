"""Turning a file's records into task rows: classification (text and label columns, label names or ids, bounded classes) and generation (prompt/response columns or chat messages), every problem with its line and column. Torch-free."""

from __future__ import annotations

from typing import Any

from sanitizer.data_readers import Problems
from sanitizer.data_rows import MAX_CLASSES, ClassificationRow, GenerationRow


def as_int(value: Any) -> int | None:
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


def label_text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else str(value)


def missing_column(probs: Problems, col: str, found: list[str], option: str) -> None:
    probs.add(
        probs.header_line,
        col,
        f"column '{col}' not found (columns found: {', '.join(found) or 'none'}); "
        f"name the right column with {option}",
    )


def parse_classification(
    header: list[str],
    records: list[tuple[int, dict[str, Any]]],
    probs: Problems,
    text_column: str,
    label_column: str,
    label_names: list[str] | None,
) -> tuple[list[ClassificationRow], list[str] | None]:
    missing = False
    if header and text_column not in header:
        missing_column(probs, text_column, header, "--text-column")
        missing = True
    if header and label_column not in header:
        missing_column(probs, label_column, header, "--label-column")
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
            t = label_text(v)
            if t in index:
                ids[line] = index[t]
            elif (k := as_int(v)) is not None and 0 <= k < len(names):
                ids[line] = k
            else:
                probs.add(
                    line,
                    label_column,
                    f"unknown label '{t}'; known labels are {', '.join(names)} "
                    "(use one of them or a 0-based index into that list)",
                )
    else:
        as_ints = [(line, v, as_int(v)) for line, v in present]
        n_int = sum(1 for _, _, k in as_ints if k is not None)
        if n_int and n_int * 2 >= len(present):  # integers expected
            for line, v, k in as_ints:
                if k is None:
                    probs.add(
                        line,
                        label_column,
                        f"label '{label_text(v)}' is not an integer but the other labels in "
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
                        f"label '{label_text(v)}' is a number but the other labels in this "
                        "column are names; use names throughout (or integer ids throughout)",
                    )
            names = sorted({label_text(v) for _, v, k in as_ints if k is None})
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
                if k is None and label_text(v) in index:
                    ids[line] = index[label_text(v)]

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


def chat_to_row(
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


def parse_generation(
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
            row = chat_to_row(rec["messages"], line, probs, keep_system)
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
