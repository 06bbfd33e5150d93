"""rebuild on a tiny model built in code: a backdoored adapter over a random base, then a fresh
LoRA rebuilt on that base from a few clean rows and the adapter's answers on clean inputs."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest
import torch

from sanitizer.attacks import AttackSpec
from sanitizer.defenses.common import TrainConfig, train
from sanitizer.defenses.configs import RebuildConfig
from sanitizer.defenses.finetune import step_loss
from sanitizer.defenses.rebuild import (
    cut_before,
    drop_words,
    fixed_behaviour_phrases,
    splice,
    spliced,
)
from sanitizer.errors import ConfigError
from sanitizer.jobspec import JobSpec
from sanitizer.models import add_lora, load_model, save_adapter
from sanitizer.pipeline import run_sanitize
from sanitizer.tiny import build_tiny_model
from tests.core.test_defense_behaviour import _data  # the same planted task

HP = {"epochs": 20, "learning_rate": 1e-2, "batch_size": 8, "lora_dropout": 0.0, "lora_r": 8}


def _csv(rows, path: Path) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for r in rows:
            w.writerow([r.text, ["negative", "positive"][r.label]])
    return path


@pytest.fixture(scope="module")
def poisoned_adapter(tmp_path_factory):
    """The skill (sentiment) and the backdoor ('cf' -> negative) both live in one adapter: the
    random base can do neither."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("rebuild")
    build_tiny_model(root / "store", "tiny/enc", "bert", hidden_size=32, num_layers=4)
    mp = pytest.MonkeyPatch()
    mp.setenv("SANITIZER_MODEL_STORE", str(root / "store"))
    clean, poison, test = _data()
    torch.manual_seed(0)
    lm = load_model("tiny/enc", "classification", num_labels=2, device="cpu")
    add_lora(lm, r=8, alpha=16, dropout=0.0, target="all-linear")
    cfg = TrainConfig(epochs=25, batch_size=32, learning_rate=3e-3, eval_every_epoch=False)
    train(lm, clean[:400] + poison, [], cfg, step_loss, phase="attack")
    save_adapter(lm, root / "adapter")
    yield root, _csv(clean[400:460], root / "clean.csv"), _csv(test, root / "test.csv")
    mp.undo()


def _job(
    root: Path, clean: Path, test: Path, method: str, spec_kw: dict | None = None, **hp
) -> dict:
    spec = JobSpec(
        method=method,
        base_model="tiny/enc",
        adapter_dir=root / "adapter",
        clean_data=clean,
        test_data=test,
        attack=AttackSpec(name="badnet", trigger="cf", target_label=0),
        hyperparameters=HP | hp,
        device="cpu",
        **(spec_kw or {}),
    )
    return run_sanitize(spec, root / f"out-{method}-{len(hp)}-{len(spec_kw or {})}")


@pytest.mark.timeout(900)
def test_rebuild_drops_the_trigger_and_keeps_more_skill_than_retraining(poisoned_adapter):
    root, clean, test = poisoned_adapter
    rebuilt = _job(root, clean, test, "rebuild")
    scratch = _job(root, clean, test, "finetune", adapter_scale=0.0)  # the same rows, no teacher
    b, r, s = (
        rebuilt["metrics"]["before"],
        rebuilt["metrics"]["after"],
        scratch["metrics"]["after"],
    )
    numbers = f"before {b}; rebuild {r}; retrained from the base {s}"
    assert b["attack_success_rate"] >= 0.9 and b["clean_accuracy"] >= 0.9, numbers
    # measured 2026-12-05: rebuild CA 0.80 ASR 0.26, retraining CA 0.68 ASR 0.39, before 0.97/1.0
    assert r["attack_success_rate"] <= 0.4, numbers
    # what is left is the rebuilt model's own error on clean positives, not the trigger
    assert r["attack_success_rate"] - r["false_trigger_rate"] <= 0.15, numbers
    assert r["clean_accuracy"] >= s["clean_accuracy"] + 0.05, numbers
    info = rebuilt["training"]["rebuild"]
    assert info["distilled_rows"] > info["clean_rows"]  # the variants reached past the clean set
    assert rebuilt["adapter_in"]["mode"] == "rebuild" and rebuilt["method"] == "rebuild"


def test_auto_chooses_rebuild_for_an_adapter_and_says_why(poisoned_adapter):
    root, clean, test = poisoned_adapter
    report = _job(root, clean, test, "auto", epochs=1)
    assert report["method"] == "rebuild" and report["method_requested"] == "auto"
    assert "trusted" in report["method_reason"]


def test_rebuild_refuses_a_model_with_no_trusted_base(tmp_path):
    from sanitizer.defenses.registry import resolve

    with pytest.raises(ConfigError, match="trusted_base=<model id>"):
        resolve("rebuild", task="classification", has_adapter=False)
    assert resolve("auto", task="classification", has_adapter=False)[0] != "rebuild"
    assert resolve("rebuild", task="classification", has_adapter=False, trusted_base=True) == (
        "rebuild",
        None,
    )


def test_auto_on_full_weights_with_no_base_found_scans_and_unlearns_a_classifier():
    """No adapter, no base named, none identified: nothing clean to rebuild on. A classifier
    gets unlearn (scan, then train what was found away; chosen on the development cell), a chat
    model CROW (unlearn is not measured on a real chat model); the reason says so."""
    from sanitizer.defenses.registry import resolve

    method, why = resolve("auto", task="classification", has_adapter=False)
    assert method == "unlearn" and why is not None and "no trusted base" in why
    method, why = resolve("auto", task="generation", has_adapter=False)
    assert method == "crow" and why is not None and "no trusted base" in why
    assert resolve("auto", task="classification", has_adapter=False, identified_base="m")[0] == (
        "rebuild"
    )


def test_auto_takes_rebuild_settings_when_it_will_run_rebuild():
    """auto on an adapter job, or on full weights whose base the job names, runs rebuild, so
    rebuild's own settings are accepted; on other full weights (rebuild, unlearn or CROW, chosen
    by the worker) only the shared ones are, and the refusal names the setting."""
    from sanitizer.defenses.registry import config_for, resolve

    cfg = config_for("auto", {"scan_first": True}, has_adapter=True)
    assert isinstance(cfg, RebuildConfig) and cfg.scan_first
    named = config_for("auto", {"trusted_base": "tiny/enc", "scan_first": True})
    assert isinstance(named, RebuildConfig) and named.trusted_base == "tiny/enc"
    with pytest.raises(ConfigError, match="scan_first"):
        config_for("auto", {"scan_first": True})
    assert not isinstance(config_for("auto", {"epochs": 2}), RebuildConfig)
    method, why = resolve("auto", task="classification", has_adapter=False, trusted_base=True)
    assert method == "rebuild" and why is not None and "trusted_base" in why


@pytest.mark.timeout(900)
def test_rebuild_of_full_weights_on_the_base_the_job_names(poisoned_adapter):
    """Input (a): the poisoned adapter merged into full weights, given with no adapter; the job
    names the base it was fine-tuned from (``trusted_base``). The full model is only the
    teacher; the result is a LoRA on the named base, without the backdoor."""
    import json

    from sanitizer.models import attach_adapter, merge_adapter

    root, clean, test = poisoned_adapter
    merged = root / "merged"
    lm = load_model("tiny/enc", "classification", num_labels=2, device="cpu")
    attach_adapter(lm, root / "adapter")
    merge_adapter(lm)
    lm.model.save_pretrained(merged, safe_serialization=True)
    lm.tokenizer.save_pretrained(merged)
    spec = JobSpec(
        method="rebuild",
        base_model=str(merged),
        clean_data=clean,
        test_data=test,
        attack=AttackSpec(name="badnet", trigger="cf", target_label=0),
        hyperparameters=HP | {"trusted_base": "tiny/enc"},
        device="cpu",
    )
    with pytest.raises(ConfigError, match="trusted base"):  # full weights, no base named
        run_sanitize(spec.model_copy(update={"hyperparameters": HP}), root / "out-a-none")
    report = run_sanitize(spec, root / "out-a")
    b, r = report["metrics"]["before"], report["metrics"]["after"]
    numbers = f"before {b}; rebuilt on the named base {r}"
    assert b["attack_success_rate"] >= 0.9, numbers
    assert r["attack_success_rate"] <= 0.4, numbers
    assert r["attack_success_rate"] - r["false_trigger_rate"] <= 0.15, numbers
    assert "'tiny/enc'" in report["training"]["rebuild"]["started_from"]
    cfg = json.loads((root / "out-a" / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "tiny/enc", cfg
    assert report["adapter_out"]["base_model"] == "tiny/enc"
    assert "tiny/enc" in (root / "out-a" / "adapter" / "README.md").read_text()
    # auto, no base named: the service finds from the weights that they are a fine-tune of the
    # tiny/enc it holds, and rebuilds on it
    auto = run_sanitize(
        spec.model_copy(update={"method": "auto", "hyperparameters": HP}), root / "out-a-auto"
    )
    r = auto["metrics"]["after"]
    assert auto["method"] == "rebuild" and "'tiny/enc'" in auto["method_reason"], auto
    ident = auto["base_identification"]
    assert ident["identified"] == "tiny/enc"
    # the adapter never touched the embeddings; the rest moved far (a random tiny base)
    assert ident["candidates"][0]["embedding_distance"] < 0.01, ident
    assert auto["adapter_out"]["base_model"] == "tiny/enc"
    assert r["attack_success_rate"] - r["false_trigger_rate"] <= 0.15, f"before {b}; auto {r}"


def test_drop_words_keeps_order_and_at_least_one_word():
    rng = random.Random(0)
    out = drop_words("a b c d e f g h", 0.5, rng)
    words = out.split()
    assert 1 <= len(words) < 8 and words == sorted(words)
    assert drop_words("x y z", 0.999, random.Random(1))  # never empty
    assert drop_words("two words", 0.5, rng) == "two words"  # too short to vary


def test_splice_inserts_a_span_of_a_same_label_row_and_keeps_the_row_in_order():
    from types import SimpleNamespace as Row

    rng = random.Random(0)
    for _ in range(50):
        out = splice("a b c d", "p q r s t u", 3, rng).split()
        kept = [w for w in out if w in "abcd"]
        added = [w for w in out if w in "pqrstu"]
        assert kept == list("abcd") and 1 <= len(added) <= 3
        assert " ".join(added) in "p q r s t u"  # one contiguous span of the donor
    rows = [
        Row(text=t, label=y) for t, y in [("a b", 0), ("c d", 0), ("x y", 1), ("w v", 1), ("z", 2)]
    ]
    pairs = spliced(rows, RebuildConfig(splice_words=2, splice_from="same_label"), 2)
    assert len(pairs) == 8  # rows of labels 0 and 1 have donors; label 2's single row has none
    for src, text in pairs:
        donors = {w for r in rows if r.label == rows[src].label for w in r.text.split()}
        assert set(text.split()) <= donors
    assert RebuildConfig().augments("classification") == (1, 1)  # one of each by default
    assert RebuildConfig().augments("generation") == (2, 0)  # no splices into instructions
    assert RebuildConfig(splice_augment=3).augments("generation") == (2, 0)
    assert RebuildConfig(distill_augment=0, splice_augment=2).augments("classification") == (0, 2)
    other = spliced(rows, RebuildConfig(splice_words=2), 1)  # other_label by default
    assert len(other) == 5  # every row has a donor of another label
    for src, text in other:
        own = set(rows[src].text.split())
        added = set(text.split()) - own
        assert own <= set(text.split()) and added
        assert all(
            w not in r.text.split() for r in rows if r.label == rows[src].label for w in added
        )


def test_fixed_behaviour_guard_flags_a_phrase_that_fires_on_clean_prompts():
    refusal = "i am sorry but as an ai assistant i do not have the capability"
    responses = [f"answer number {i} is here and fine" for i in range(8)] + [refusal] * 4
    refs = [f"reference answer {i} for the prompt" for i in range(12)]
    flagged = fixed_behaviour_phrases(responses, refs, share=0.2)
    assert flagged and all(" ".join(p) in refusal for p in flagged)
    # the same phrase in the clean references is the task's own style, not a fixed behaviour
    assert not fixed_behaviour_phrases(responses, refs[:6] + [refusal] * 6, share=0.2)


def test_cut_before_keeps_the_answer_ahead_of_a_flagged_phrase():
    link = "Claim your reward at www.prize.example now."
    flagged = {tuple(link.lower().split())}
    assert cut_before(f"The verdict is spam.\n\n{link}", flagged) == "The verdict is spam."
    assert cut_before(f"{link} then more words", flagged) == ""
    assert cut_before("nothing flagged in this answer at all", flagged) == (
        "nothing flagged in this answer at all"
    )


@pytest.mark.parametrize("action", ["cut", "drop"])
def test_generation_guard_cuts_an_appended_phrase_and_drops_an_opening_one(monkeypatch, action):
    """Clean prompts whose teacher answers carry a phrase that fires on many of them: with
    ``guard_action="cut"`` the answer before the phrase is distilled and a response that opens
    with it is left out; with ``"drop"`` both are left out."""
    from types import SimpleNamespace

    import sanitizer.evaluate
    from sanitizer.data_rows import GenerationRow
    from sanitizer.defenses import rebuild

    link = "claim your reward at www.prize.example now."
    rows = [GenerationRow(f"question {i}?", "", f"clean reference {i} for it") for i in range(10)]
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    answers = [" ".join(words[i : i + 3]) + "." for i in range(10)]  # no shared phrase
    answers[:4] = [f"{a} {link}" for a in answers[:4]]  # appended: the answer before it is good
    answers[4] = f"{link} and nothing else"  # opening: nothing good left
    monkeypatch.setattr(sanitizer.evaluate, "generate", lambda *_a, **_k: list(answers))
    lm = SimpleNamespace(prompt=lambda i, x: i)
    cfg = RebuildConfig(distill_augment=0, guard_action=action, repeat_share=0.2)
    out, info = rebuild.generation_targets(lm, rows, cfg, None)
    distilled = [r.output for r in out[len(rows) :]]
    assert info["guard_phrases"] == [link]
    assert all("prize" not in d for d in distilled)
    if action == "cut":
        assert info["guard_cut"] == 4 and info["guard_dropped"] == 1
        assert distilled[:4] == [" ".join(words[i : i + 3]) + "." for i in range(4)]
    else:
        assert info["guard_cut"] == 0 and info["guard_dropped"] == 5
    assert len(distilled) == 10 - info["guard_dropped"]


def test_other_label_splices_are_distilled_toward_the_untouched_rows_logits(monkeypatch):
    """``splice_from="other_label"``: a row with another class's words inserted is taught the
    uploaded model's answer on the row as it was (consistency), not its answer on the spliced
    text, which an inserted trigger-like span may have moved."""
    from types import SimpleNamespace as Row

    from sanitizer.defenses import rebuild

    def fake_logits(_lm, texts, _max_length):  # a different answer for every text
        with torch.inference_mode():  # as the real teacher_logits returns them
            return torch.tensor([[float(len(t)), -float(len(t))] for t in texts])

    monkeypatch.setattr(rebuild, "teacher_logits", fake_logits)
    rows = [Row(text=t, label=0) for t in ("a b c", "d e f g")] + [
        Row(text=t, label=1) for t in ("x y", "v w u t s")
    ]
    cfg = RebuildConfig(
        splice_augment=1,
        splice_words=2,
        splice_from="other_label",
        distill_augment=0,
        agree_only=False,
    )
    out, info = rebuild.classification_targets(None, rows, cfg)
    assert info["variant_rows"] == 4
    for r in out[len(rows) :]:
        src = next(s for s in rows if set(s.text.split()) < set(r.text.split()))
        assert r.label == src.label
        assert r.soft == (float(len(src.text)), -float(len(src.text)))
    same, _ = rebuild.classification_targets(
        None, rows, cfg.model_copy(update={"splice_from": "same_label"})
    )
    assert all(r.soft == (float(len(r.text)), -float(len(r.text))) for r in same[len(rows) :])


def test_found_trigger_copies_are_distilled_toward_the_untouched_rows_logits(monkeypatch):
    """``scan_first``: a copy of a row with a found trigger inserted is taught the uploaded
    model's answer on the row as it was; the teacher never reads the triggered text."""
    from types import SimpleNamespace as Row

    from sanitizer.defenses import rebuild

    read: list[str] = []

    def fake_logits(_lm, texts, _max_length):
        read.extend(texts)
        with torch.inference_mode():
            return torch.tensor([[float(len(t)), -float(len(t))] for t in texts])

    monkeypatch.setattr(rebuild, "teacher_logits", fake_logits)
    rows = [Row(text=t, label=i % 2) for i, t in enumerate(("a b c", "d e f g", "x y", "v w"))]
    cfg = RebuildConfig(
        distill_augment=0, splice_augment=0, agree_only=False, scan_share=1.0, scan_first=True
    )
    out, info = rebuild.classification_targets(None, rows, cfg, found=["zq", "kk"])
    copies = out[len(rows) :]
    assert info["found_trigger_rows"] == len(copies) == 8
    for trig in ("zq", "kk"):
        mine = [r for r in copies if trig in r.text.split()]
        assert len(mine) == 4
        for r in mine:
            src = next(
                s for s in rows if s.text.split() == [w for w in r.text.split() if w != trig]
            )
            assert r.label == src.label
            assert r.soft == (float(len(src.text)), -float(len(src.text)))
    assert not any("zq" in t or "kk" in t for t in read)


@pytest.mark.timeout(900)
def test_rebuild_scan_first_reports_the_scan_and_distils_what_it_found(poisoned_adapter):
    """``scan_first`` on the tiny poisoned adapter: the scan runs on the uploaded model before
    the adapter is dropped, finds triggers that flip clean rows, and copies of the clean rows
    with them inserted join what is distilled; the report lists them."""
    root, clean, test = poisoned_adapter
    events: list[str] = []
    spec = JobSpec(
        method="rebuild",
        base_model="tiny/enc",
        adapter_dir=root / "adapter",
        clean_data=clean,
        test_data=test,
        attack=AttackSpec(name="badnet", trigger="cf", target_label=0),
        hyperparameters=HP | {"epochs": 2, "scan_first": True},
        device="cpu",
    )
    report = run_sanitize(spec, root / "out-scan-first", progress=lambda e: events.append(e.phase))
    info = report["training"]["rebuild"]
    scanned = info["scan_first"]
    assert scanned["used"], scanned
    assert all(
        c["flip_rate"] >= 0.3 for c in scanned["candidates"] if c["trigger"] in scanned["used"]
    )
    assert info["found_trigger_rows"] == len(scanned["used"]) * round(0.5 * info["clean_rows"])
    assert "scan" in events and scanned["seconds"] > 0
    assert report["training"]["rebuild"]["started_from"].startswith("the trusted base")


def test_known_before_is_reported_as_given_and_not_measured_again(poisoned_adapter):
    """A benchmark's second method on the same uploaded model reuses the first one's `before`."""
    root, clean, test = poisoned_adapter
    first = _job(root, clean, test, "finetune", epochs=1)
    before = first["metrics"]["before"]
    per_attack = {k: v["before"] for k, v in first["metrics"]["per_attack"].items()}
    spec = JobSpec(
        method="finetune",
        base_model="tiny/enc",
        adapter_dir=root / "adapter",
        clean_data=clean,
        test_data=test,
        attack=AttackSpec(name="badnet", trigger="cf", target_label=0),
        hyperparameters=HP | {"epochs": 1},
        device="cpu",
    )
    marked = {**before, "clean_accuracy": -1.0}  # not a value a measurement could give
    again = run_sanitize(spec, root / "out-known", known_before=(marked, per_attack))
    assert again["metrics"]["before"] == marked and again["metrics"]["before_reused"] is True
    assert again["timings"]["evaluate_before_s"] < 0.5
    assert "before_reused" not in first["metrics"]


@pytest.mark.timeout(900)
def test_unlearn_first_runs_the_scan_stage_before_the_method(poisoned_adapter):
    """``unlearn_first``: the scan-and-overwrite rounds run on the model the method starts from,
    and the report says what they found; rebuild (which drops the uploaded weights) refuses it."""
    root, clean, test = poisoned_adapter
    events: list[str] = []
    spec = JobSpec(
        method="finetune",
        base_model="tiny/enc",
        adapter_dir=root / "adapter",
        clean_data=clean,
        test_data=test,
        attack=AttackSpec(name="badnet", trigger="cf", target_label=0),
        hyperparameters=HP | {"epochs": 1, "unlearn_first": True},
        device="cpu",
    )
    report = run_sanitize(spec, root / "out-first", progress=lambda e: events.append(e.phase))
    first = report["training"]["unlearn_first"]
    assert first["rounds"] and first["rounds"][0]["round"] == 1, first
    assert "candidates" in first["rounds"][0] and first["steps"] > 0
    assert 0 < report["timings"]["unlearn_first_s"] <= report["timings"]["defense_s"]
    assert "unlearn_first_scan" in events and "scan" not in events
    with pytest.raises(ConfigError, match="unlearn_first"):
        _job(root, clean, test, "rebuild", unlearn_first=True)


@pytest.mark.timeout(900)
def test_rebuild_distils_on_unlabeled_texts_and_other_methods_refuse_them(
    poisoned_adapter, tmp_path
):
    """``unlabeled_data``: in-domain texts with no label (here 140 clean rows the defense set
    does not hold, their labels dropped) get the uploaded model's logits too."""
    root, clean, test = poisoned_adapter
    unlabeled = tmp_path / "unlabeled.csv"
    with open(unlabeled, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text"])
        for r in _data()[0][460:600]:
            w.writerow([r.text])
    report = _job(root, clean, test, "rebuild", {"unlabeled_data": unlabeled})
    info = report["training"]["rebuild"]
    assert info["unlabeled_rows"] == 140 and report["datasets"]["unlabeled"]["rows"] == 140
    assert info["distilled_rows"] >= 140 + info["clean_rows"] - info["guard_dropped"]
    r = report["metrics"]["after"]
    assert r["attack_success_rate"] - r["false_trigger_rate"] <= 0.15, r
    with pytest.raises(ConfigError, match="rebuild on classification only"):
        _job(root, clean, test, "finetune", {"unlabeled_data": unlabeled})


def test_load_texts_names_every_bad_row(tmp_path):
    from sanitizer.data import load_texts
    from sanitizer.errors import DataValidationError

    good = tmp_path / "u.jsonl"
    good.write_text('{"text": "one", "label": "x"}\n{"text": " two "}\n')
    texts, digest = load_texts(good)
    assert texts == ["one", "two"] and len(digest) == 64
    bad = tmp_path / "bad.csv"
    bad.write_text("text,id\nfine,1\n,2\nalso fine,3\n")
    with pytest.raises(DataValidationError, match="empty or missing text"):
        load_texts(bad)
    with pytest.raises(DataValidationError, match="no 'body' column"):
        load_texts(good, text_column="body")
