"""scan on tiny models built in code: flags the poisoned adapter with its target, not the clean
twin (the same base, no adapter); the attack spec is never given to it."""

from __future__ import annotations

import pytest

from sanitizer.models import attach_adapter, load_model
from sanitizer.scan import ScanConfig, insert_text, scan_classifier
from tests.core.test_defense_behaviour import _data
from tests.core.test_rebuild import poisoned_adapter  # noqa: F401  (the shared fixture)


@pytest.mark.timeout(900)
def test_scan_flags_the_poisoned_adapter_and_names_its_target(poisoned_adapter):  # noqa: F811
    root, _, _ = poisoned_adapter
    clean, _, _ = _data()
    cfg = ScanConfig(trigger_len=2)
    lm = load_model("tiny/enc", "classification", num_labels=2, device="cpu")
    attach_adapter(lm, root / "adapter")
    found = scan_classifier(lm, clean[400:600], ["negative", "positive"], cfg)
    # measured 2026-12-05: 'your cf' flips 100% -> negative (the planted target), random
    # tokens of that length 9%: lift 0.91
    assert found.verdict == "backdoor" and found.target_name == "negative", found
    assert "cf" in found.candidates[0].trigger.split() and found.candidates[0].lift > 0.7
    # the searched pair is padded: its shortest form is the planted word alone, ranked in the
    # top 3 beside it (the search cannot return fewer than trigger_len tokens)
    short = [c for c in found.candidates[:3] if c.shortened_from]
    assert short and short[0].trigger == "cf" and short[0].flip_rate >= 0.9 * 0.8, found
    assert short[0].shortened_from in {c.trigger for c in found.candidates}
    twin = load_model("tiny/enc", "classification", num_labels=2, device="cpu")
    clean_scan = scan_classifier(twin, clean[400:600], ["negative", "positive"], cfg)
    # measured: 0.16 on the untrained base
    assert clean_scan.verdict == "clean" and clean_scan.score < 0.5, clean_scan


def test_insert_text_puts_the_trigger_between_words():
    import random

    out = insert_text("a b c", "zz", random.Random(0)).split()
    assert sorted(out) == ["a", "b", "c", "zz"] and len(out) == 4
    assert insert_text("a b c", "zz", random.Random(0), "first") == "zz a b c"


def test_triggers_found_at_the_start_are_inserted_there_for_removal():
    from sanitizer.scan import Candidate, first_placed, insertions

    found = [
        Candidate("zz", [1], 0, "neg", 1.0, 0.0, position="first"),
        Candidate("yy", [2], 0, "neg", 0.9, 0.0),
    ]
    at_start = first_placed(found)
    assert at_start == {"zz"}
    texts = [f"w{i} x{i} y{i} z{i}" for i in range(20)]
    out = insertions(texts, ["zz", "yy"], 1.0, 0, at_start)
    zz = [t for _, t in out if "zz" in t.split()]
    yy = [t for _, t in out if "yy" in t.split()]
    assert len(zz) == len(yy) == 20
    assert all(t.startswith("zz ") for t in zz)
    # the others at random word starts: not all first
    assert any(not t.startswith("yy ") for t in yy)


@pytest.mark.timeout(900)
def test_a_scan_at_both_places_screens_each_and_measures_a_candidate_where_it_searched(
    poisoned_adapter,  # noqa: F811
):
    """search_position=both: every label screened at a random word start and at the start of
    the text; each candidate's flip rate is measured at its own place (a prefix trigger, such
    as a fronted clause, does nothing mid-text)."""
    from sanitizer.scan import flip_rate

    root, _, _ = poisoned_adapter
    clean, _, _ = _data()
    cfg = ScanConfig(trigger_len=2, search_position="both")
    lm = load_model("tiny/enc", "classification", num_labels=2, device="cpu")
    attach_adapter(lm, root / "adapter")
    found = scan_classifier(lm, clean[400:600], ["negative", "positive"], cfg)
    assert set(found.screen_loss) == {
        f"{n} ({p})" for n in ("negative", "positive") for p in ("random", "first")
    }, found.screen_loss
    assert found.verdict == "backdoor" and found.target_name == "negative", found
    assert "cf" in found.candidates[0].trigger.split(), found.candidates[0]
    from sanitizer.evaluate import predict_labels

    plain = predict_labels(lm, [r.text for r in clean[400:600]], max_length=cfg.max_length)
    # full searches ran only on the label-place pairs the screen found easiest
    easiest = sorted(found.screen_loss, key=found.screen_loss.__getitem__)[: cfg.focus_labels]
    searched = {f"{c.target_name} ({c.position})" for c in found.candidates}
    assert searched <= set(easiest), (searched, found.screen_loss)
    # the flip rate reported is the one at the candidate's place, on the scan's held-out rows
    top = found.candidates[0]
    assert top.target_label is not None
    right = [r for r, p in zip(clean[400:600], plain, strict=True) if p == r.label]
    at_top = flip_rate(lm, right, top.trigger, top.target_label, cfg, 0, None, top.position)
    assert at_top >= cfg.threshold, (top, at_top)


@pytest.mark.timeout(900)
def test_a_sanitize_job_can_scan_its_own_result(poisoned_adapter):  # noqa: F811
    """scan_after: the uploaded model is flagged (above), the rebuilt one is scanned in the
    same job and its verdict lands in the report."""
    from tests.core.test_rebuild import _job

    root, clean_csv, test_csv = poisoned_adapter
    report = _job(root, clean_csv, test_csv, "rebuild", spec_kw={"scan_after": True})
    scan = report["scan"]
    assert scan["of"] == "the sanitized model" and scan["verdict"] in ("backdoor", "clean")
    assert report["timings"]["scan_s"] > 0
    # the verdict follows the rule from the measured evidence. Whether the rebuilt tiny model
    # scans clean is not asserted: this model of six-word texts is fragile (random 3-token
    # insertions flipped 35% of its positives on one machine, 6% on another, with the best
    # search near 89%), so its verdict turns on the control's float-level luck; the rebuilt
    # model's ASR is checked in test_rebuild
    top = scan["candidates"][0]
    assert top["control_flip_rate"] is not None and top["lift"] is not None, top
    flagged = top["flip_rate"] >= scan["threshold"] and top["lift"] >= ScanConfig().min_lift
    assert scan["verdict"] == ("backdoor" if flagged else "clean"), scan


@pytest.mark.timeout(900)
def test_scan_never_reads_the_attack_description(poisoned_adapter, tmp_path):  # noqa: F811
    """The same folder with and without an attack.json (one naming a false trigger and target):
    the same verdict, target and candidates, so the result comes from the weights alone."""
    import json
    import shutil

    from sanitizer.scan import run_scan
    from tests.core.test_rebuild import _csv

    root, _, _ = poisoned_adapter
    clean, _, _ = _data()
    data = _csv(clean[400:600], tmp_path / "clean.csv")
    told = tmp_path / "told"
    shutil.copytree(root / "adapter", told)
    (told / "attack.json").write_text(
        json.dumps({"attack": {"name": "badnet", "trigger": "zz", "target_label": 1}})
    )
    assert not (root / "adapter" / "attack.json").exists()
    cfg = ScanConfig(trigger_len=2)
    plain = run_scan("tiny/enc", data, adapter_dir=root / "adapter", cfg=cfg, device="cpu")
    given = run_scan("tiny/enc", data, adapter_dir=told, cfg=cfg, device="cpu")
    assert plain["verdict"] == given["verdict"] == "backdoor"
    assert plain["target_name"] == given["target_name"] == "negative"
    assert plain["candidates"] == given["candidates"]


def test_length_sorted_batches_give_each_row_its_own_answer(tmp_path, monkeypatch):
    """predict_labels and the search's swap losses send rows through the model shortest first
    in small batches; every row must get what it gets alone, in the caller's order."""
    import random

    import torch

    from sanitizer.evaluate import predict_labels
    from sanitizer.tiny import build_tiny_model
    from sanitizer.trigger_search import _loss_per_trigger, encode

    build_tiny_model(tmp_path, "tiny/enc", "bert", hidden_size=32, num_layers=2)
    monkeypatch.setenv("SANITIZER_MODEL_STORE", str(tmp_path))
    torch.manual_seed(0)
    lm = load_model("tiny/enc", "classification", num_labels=2, device="cpu")
    clean, _, _ = _data()
    rng = random.Random(1)
    # rows of very different lengths, shuffled, so sorting reorders them
    texts = [" ".join([r.text] * rng.randint(1, 4)) for r in clean[:40]]
    alone = [predict_labels(lm, [t], batch_size=1)[0] for t in texts]
    assert len(set(alone)) == 2  # both labels occur, so a reordering would show
    assert predict_labels(lm, texts, batch_size=7) == alone
    # rebuild's teacher logits, in the caller's order
    from sanitizer.defenses.rebuild import teacher_logits

    one_by_one = torch.cat([teacher_logits(lm, [t], 128) for t in texts])
    assert torch.allclose(teacher_logits(lm, texts, 128), one_by_one, atol=1e-5)
    rows = encode(lm, texts[:9], 64, 2, "random", 0)
    trigs = [[rng.randrange(5, 100) for _ in range(2)] for _ in range(5)]
    batched = _loss_per_trigger(lm, rows, trigs, 1, [0], batch=4)
    single = torch.stack(
        [
            torch.stack([_loss_per_trigger(lm, [r], [t], 1, [0], batch=1)[0] for r in rows]).mean()
            for t in trigs
        ]
    )
    assert torch.allclose(batched, single, atol=1e-5), (batched, single)
    assert len({round(float(x), 4) for x in batched}) > 1  # the triggers differ in loss


def test_a_bound_skips_only_triggers_that_cannot_win(tmp_path, monkeypatch):
    """A search keeps a swap only if its mean loss is under the best so far; with that bound,
    a trigger whose summed loss already exceeds it stops early (inf), every other trigger's mean
    is the unbounded one, and fewer rows go through the model."""
    import random

    import torch

    from sanitizer.tiny import build_tiny_model
    from sanitizer.trigger_search import _loss_per_trigger, encode

    build_tiny_model(tmp_path, "tiny/enc", "bert", hidden_size=32, num_layers=2)
    monkeypatch.setenv("SANITIZER_MODEL_STORE", str(tmp_path))
    torch.manual_seed(0)
    lm = load_model("tiny/enc", "classification", num_labels=2, device="cpu")
    clean, _, _ = _data()
    rng = random.Random(2)
    rows = encode(lm, [r.text for r in clean[:16]], 64, 2, "random", 0)
    trigs = [[rng.randrange(5, 100) for _ in range(2)] for _ in range(12)]
    free_count, bounded_count = [0], [0]
    free = _loss_per_trigger(lm, rows, trigs, 1, free_count, batch=8)
    bound = float(free.median())
    bounded = _loss_per_trigger(lm, rows, trigs, 1, bounded_count, batch=8, bound=bound)
    for f, b in zip(free.tolist(), bounded.tolist(), strict=True):
        if f <= bound:
            assert abs(f - b) < 1e-5, (f, b)
        else:
            assert b == float("inf"), (f, b)
    assert int((free > bound).sum()) >= 3  # the bound rules some out, so the check can fail
    assert free_count[0] == len(rows) * len(trigs)
    # a bound under every trigger's loss: each stops as soon as its sum passes it, well before
    # the last rows (the tiny model's losses are near each other, so the median bound above only
    # rules them out at the end)
    low = float(free.min()) / 2
    low_count = [0]
    assert torch.isinf(_loss_per_trigger(lm, rows, trigs, 1, low_count, batch=8, bound=low)).all()
    assert low_count[0] <= free_count[0] * 0.6, (low_count, free_count)


def test_the_report_says_which_candidates_work_at_the_start_of_the_text():
    from sanitizer.report_scan import scan_section
    from sanitizer.scan import Candidate, ScanResult

    result = ScanResult(
        "backdoor",
        0.95,
        0.8,
        0,
        "neg",
        [
            Candidate("when you", [1, 2], 0, "neg", 0.95, 0.1, 0.0, position="first"),
            Candidate("cf", [3], 0, "neg", 0.9, 0.1, 0.0),
        ],
    ).to_dict()
    page = scan_section(result)
    first, second = page.split("<code>when you</code>")[1].split("<code>cf</code>")
    assert "(at the start)" in first and "(at the start)" not in second
