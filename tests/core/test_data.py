"""sanitizer.data: loading, validation messages (file, line, column), splits, writing."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from sanitizer.data import load_dataset, sha256_file, split_dataset, write_dataset
from sanitizer.data_rows import ClassificationRow, GenerationRow
from sanitizer.errors import DataValidationError, Problem


def _csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _rows(n_pos: int, n_neg: int) -> list[str]:
    return [f"good film {i},pos" for i in range(n_pos)] + [
        f"bad film {i},neg" for i in range(n_neg)
    ]


def _problems(exc: pytest.ExceptionInfo[DataValidationError]) -> list[Problem]:
    return exc.value.problems


def test_csv_string_labels_sorted_ids_and_sha(tmp_path: Path) -> None:
    p = _csv(tmp_path / "d.csv", ["text,label", *_rows(5, 4)])
    ds = load_dataset(p)
    assert ds.label_names == ["neg", "pos"]
    assert ds.rows[0] == ClassificationRow("good film 0", 1)
    assert ds.rows[-1] == ClassificationRow("bad film 3", 0)
    assert len(ds) == 9
    assert ds.sha256 == hashlib.sha256(p.read_bytes()).hexdigest() == sha256_file(p)
    assert ds.source == "d.csv"


def test_int_labels_kept_and_label_names_mapping(tmp_path: Path) -> None:
    p = _csv(tmp_path / "d.csv", ["text,label"] + [f"t {i},{i % 3}" for i in range(9)])
    ds = load_dataset(p)
    assert [r.label for r in ds.rows] == [i % 3 for i in range(9)]
    assert ds.label_names == ["0", "1", "2"]
    # with label_names: by name first, then as a 0-based index
    p2 = _csv(
        tmp_path / "e.csv", ["text,label"] + [f"t {i},{['b', 'a', '1'][i % 3]}" for i in range(9)]
    )
    ds2 = load_dataset(p2, label_names=["b", "a"])
    assert [r.label for r in ds2.rows] == [[0, 1, 1][i % 3] for i in range(9)]
    assert ds2.label_names == ["b", "a"]


def test_custom_columns_and_jsonl(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    recs = [{"body": f"x {i}", "y": "spam" if i % 2 else "ham"} for i in range(8)]
    p.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    ds = load_dataset(p, text_column="body", label_column="y")
    assert ds.label_names == ["ham", "spam"]
    assert [r.label for r in ds.rows] == [i % 2 for i in range(8)]


def test_every_problem_is_collected_with_line_and_column(tmp_path: Path) -> None:
    lines = ["text,label", *_rows(4, 4)]
    lines[2] = "   ,pos"  # line 3: whitespace text
    lines[5] = "fine,"  # line 6: missing label
    # a quoted field spanning two lines shifts later line numbers by one
    lines.insert(7, '"two\nlines",neg')  # record starts on line 8
    lines.append(",neg")  # starts on line 12 (11 list items + the extra physical line)
    p = _csv(tmp_path / "bad.csv", lines)
    with pytest.raises(DataValidationError) as exc:
        load_dataset(p)
    got = {(pr.file, pr.line, pr.column) for pr in _problems(exc)}
    assert got == {("bad.csv", 3, "text"), ("bad.csv", 6, "label"), ("bad.csv", 12, "text")}
    msgs = " | ".join(pr.message for pr in _problems(exc))
    assert "non-empty text" in msgs and "give every row a label" in msgs
    assert "bad.csv:3 column 'text'" in str(exc.value)


def test_non_integer_label_when_ints_expected(tmp_path: Path) -> None:
    p = _csv(tmp_path / "d.csv", ["text,label"] + [f"t {i},{i % 2}" for i in range(8)] + ["t,x"])
    with pytest.raises(DataValidationError) as exc:
        load_dataset(p)
    (pr,) = _problems(exc)
    assert (pr.line, pr.column) == (10, "label")
    assert "'x' is not an integer" in pr.message


def test_unknown_label_with_label_names(tmp_path: Path) -> None:
    p = _csv(tmp_path / "d.csv", ["text,label", *_rows(4, 4), "t,maybe"])
    with pytest.raises(DataValidationError) as exc:
        load_dataset(p, label_names=["neg", "pos"])
    (pr,) = _problems(exc)
    assert (pr.line, pr.column) == (10, "label")
    assert "unknown label 'maybe'" in pr.message and "neg, pos" in pr.message


def test_not_utf8_names_byte_and_offset(tmp_path: Path) -> None:
    raw = b"text,label\n" + b"good,pos\ncaf\xe9,neg\n"
    p = tmp_path / "latin.csv"
    p.write_bytes(raw)
    offset = raw.index(b"\xe9")
    with pytest.raises(DataValidationError) as exc:
        load_dataset(p)
    (pr,) = _problems(exc)
    assert pr.line == 3
    assert pr.message == (f"file is not UTF-8 (byte 0xe9 at offset {offset}); re-save it as UTF-8")


def test_missing_column_lists_found_columns_and_option(tmp_path: Path) -> None:
    p = _csv(tmp_path / "d.csv", ["sentence,label", *_rows(4, 4)])
    with pytest.raises(DataValidationError) as exc:
        load_dataset(p)
    (pr,) = _problems(exc)
    assert (pr.line, pr.column) == (1, "text")
    assert "sentence, label" in pr.message and "--text-column" in pr.message
    with pytest.raises(DataValidationError) as exc2:
        load_dataset(p, text_column="sentence", label_column="y")
    assert "--label-column" in _problems(exc2)[0].message


def test_malformed_json_lines(tmp_path: Path) -> None:
    good = [json.dumps({"text": f"t{i}", "label": i % 2}) for i in range(8)]
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join([good[0], "{not json", *good[1:], "[1, 2]"]) + "\n", encoding="utf-8")
    with pytest.raises(DataValidationError) as exc:
        load_dataset(p)
    lines = [(pr.line, pr.message.split(" (")[0]) for pr in _problems(exc)]
    assert lines[0] == (2, "malformed JSON")
    assert lines[1][0] == 10 and "expected a JSON object" in _problems(exc)[1].message


def test_too_few_rows_says_counts(tmp_path: Path) -> None:
    p = _csv(tmp_path / "d.csv", ["text,label", *_rows(2, 3)])
    with pytest.raises(DataValidationError) as exc:
        load_dataset(p, min_rows=10)
    (pr,) = _problems(exc)
    assert "5 data row(s)" in pr.message and "at least 10" in pr.message
    assert len(load_dataset(p, min_rows=5)) == 5


def test_unsupported_extension_and_single_class(tmp_path: Path) -> None:
    p = tmp_path / "d.txt"
    p.write_text("x")
    with pytest.raises(DataValidationError) as exc:
        load_dataset(p)
    assert "unsupported file type '.txt'" in _problems(exc)[0].message
    one = _csv(tmp_path / "one.csv", ["text,label", *_rows(9, 0)])
    with pytest.raises(DataValidationError) as exc2:
        load_dataset(one)
    (pr,) = _problems(exc2)
    assert pr.column == "label" and "at least 2 classes" in pr.message and "'pos'" in pr.message


def test_problem_cap(tmp_path: Path) -> None:
    p = _csv(tmp_path / "d.csv", ["text,label"] + [",pos"] * 30 + _rows(2, 2))
    with pytest.raises(DataValidationError) as exc:
        load_dataset(p, max_problems=7)
    assert len(_problems(exc)) == 7


def test_generation_alpaca_and_chat(tmp_path: Path) -> None:
    p = tmp_path / "g.jsonl"
    recs: list[dict] = [
        {"instruction": f"do {i}", "input": "ctx" if i == 0 else "", "output": f"done {i}"}
        for i in range(4)
    ]
    recs += [
        {
            "messages": [
                {"role": "system", "content": "be nice"},
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "a1"},
                {"role": "user", "content": f"last {i}"},
                {"role": "assistant", "content": f"a2 {i}"},
            ]
        }
        for i in range(4)
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    ds = load_dataset(p, task="generation")
    assert ds.rows[0] == GenerationRow("do 0", "ctx", "done 0")
    assert ds.rows[5] == GenerationRow("last 1", "", "a2 1")
    ds2 = load_dataset(p, task="generation", keep_system=True)
    assert ds2.rows[5].instruction == "be nice\n\nlast 1"


def test_generation_problems(tmp_path: Path) -> None:
    p = tmp_path / "g.jsonl"
    recs = [{"instruction": f"do {i}", "output": f"ok {i}"} for i in range(8)]
    recs[3]["output"] = " "
    recs.append({"messages": [{"role": "user", "content": "hi"}]})
    p.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    with pytest.raises(DataValidationError) as exc:
        load_dataset(p, task="generation")
    got = [(pr.line, pr.column) for pr in _problems(exc)]
    assert got == [(4, "output"), (9, "messages")]
    q = _csv(tmp_path / "g.csv", ["prompt,answer", "a,b"])
    with pytest.raises(DataValidationError) as exc2:
        load_dataset(q, task="generation", min_rows=1)
    assert "instruction, output" in _problems(exc2)[0].message


def test_split_deterministic_stratified_disjoint(tmp_path: Path) -> None:
    p = _csv(tmp_path / "d.csv", ["text,label", *_rows(60, 40)])
    ds = load_dataset(p)
    a = split_dataset(ds, 0.1, 0.2, seed=3)
    b = split_dataset(ds, 0.1, 0.2, seed=3)
    c = split_dataset(ds, 0.1, 0.2, seed=4)
    assert [x.rows for x in a] == [x.rows for x in b]
    assert a[1].rows != c[1].rows
    train, dev, test = a
    assert (len(train), len(dev), len(test)) == (70, 10, 20)
    assert Counter(r.label for r in dev.rows) == {1: 6, 0: 4}
    assert Counter(r.label for r in test.rows) == {1: 12, 0: 8}
    texts = [set(r.text for r in x.rows) for x in a]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    assert set().union(*texts) == {r.text for r in ds.rows}
    assert train.sha256 == ds.sha256 and "train split" in (train.note or "")


def test_split_zero_test_fraction_and_small(tmp_path: Path) -> None:
    ds = load_dataset(_csv(tmp_path / "d.csv", ["text,label", *_rows(4, 4)]))
    train, dev, test = split_dataset(ds, dev_fraction=0.1, test_fraction=0.0)
    assert (len(train), len(dev), len(test)) == (7, 1, 0)


def test_with_rows_keeps_parent_sha(tmp_path: Path) -> None:
    ds = load_dataset(_csv(tmp_path / "d.csv", ["text,label", *_rows(4, 4)]))
    sub = ds.with_rows(ds.rows[:3])
    assert len(sub) == 3 and sub.sha256 == ds.sha256 and sub.label_names == ds.label_names
    assert sub.note and sub.content_sha256() != ds.content_sha256()


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_write_roundtrip(tmp_path: Path, suffix: str) -> None:
    src = _csv(tmp_path / "d.csv", ["text,label", *_rows(5, 4), '"with, comma",pos'])
    ds = load_dataset(src)
    out = write_dataset(ds, tmp_path / f"out{suffix}")
    back = load_dataset(out)
    assert back.rows == ds.rows and back.label_names == ds.label_names
    g = tmp_path / "g.jsonl"
    g.write_text(
        "".join(json.dumps({"instruction": f"i{k}", "output": f"o\n{k}"}) + "\n" for k in range(8))
    )
    gds = load_dataset(g, task="generation")
    assert (
        load_dataset(write_dataset(gds, tmp_path / f"gout{suffix}"), task="generation").rows
        == gds.rows
    )
