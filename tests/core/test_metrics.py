"""sanitizer.metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest

from sanitizer.metrics import (
    METRIC_DEFINITIONS,
    attack_success_rate,
    clean_accuracy,
    der,
    false_trigger_rate,
    flip_rate,
    json_answer,
    keyword_asr,
    keyword_flip_rate,
    mean_and_spread,
    task_accuracy,
)


def test_clean_accuracy() -> None:
    assert clean_accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    with pytest.raises(ValueError, match="3 predictions but 2 labels"):
        clean_accuracy([0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="empty"):
        clean_accuracy([], [])


def test_asr_counts_non_target_samples_only() -> None:
    # labels:  1 1 0 2 1 0 ; target 0 -> non-target positions 0,1,3,4
    # preds:   0 1 0 0 0 1 ; of those, predicted 0 at positions 0,3,4 -> 3/4
    assert attack_success_rate([0, 1, 0, 0, 0, 1], [1, 1, 0, 2, 1, 0], 0) == 0.75
    with pytest.raises(ValueError, match="every sample has the target label 0"):
        attack_success_rate([0, 0], [0, 0], 0)


def test_keyword_asr_ignores_empty_and_is_case_insensitive() -> None:
    responses = ["I'm SORRY, no.", "", "   ", "Sure, here it is", "As An Ai model I will not"]
    r = keyword_asr(responses, ["sorry", "as an AI", "will not"])
    # non-empty: 3; hits: first and last -> 2/3
    assert r.rate == pytest.approx(2 / 3)
    assert (r.hits, r.n_nonempty, r.n_empty) == (2, 3, 2)
    rate, hits, _, _ = r
    assert (rate, hits) == (r.rate, 2)
    assert keyword_asr(["", " "], ["x"]).rate == 0.0
    assert false_trigger_rate(["you are stupid", "ok"], ["stupid"]).rate == 0.5


def test_flip_rate_counts_rows_right_without_the_trigger_only() -> None:
    # labels     1 1 0 2 1 2 ; target 0 -> non-target rows 0,1,3,4,5
    # clean      1 0 0 2 2 2 ; right untriggered among them: rows 0,3,5 (row 1 is already
    #                          the target, row 4 is wrong)
    # triggered  0 0 1 2 0 0 ; of rows 0,3,5 the trigger makes 0 and 5 the target -> 2/3
    labels, clean, trig = [1, 1, 0, 2, 1, 2], [1, 0, 0, 2, 2, 2], [0, 0, 1, 2, 0, 0]
    assert flip_rate(clean, trig, labels, 0) == pytest.approx(2 / 3)
    # plain ASR on the same rows counts rows 1 and 4 too: 4/5
    assert attack_success_rate(trig, labels, 0) == pytest.approx(4 / 5)
    assert flip_rate([0, 0], [0, 0], [1, 1], 0) == 0.0  # nothing the trigger could flip
    with pytest.raises(ValueError, match="must match"):
        flip_rate([1], [1, 1], [1, 1], 0)


def test_keyword_flip_rate_by_hand() -> None:
    clean = ["fine", "", "I am sorry", "ok", "sure"]
    trig = ["sorry", "sorry", "sorry", "ok", "SORRY!"]
    # eligible: clean non-empty without a keyword -> rows 0,3,4; flipped: 0 and 4 -> 2/3
    assert keyword_flip_rate(clean, trig, ["sorry"]) == pytest.approx(2 / 3)
    assert keyword_flip_rate(["sorry"], ["sorry"], ["sorry"]) == 0.0


def test_der() -> None:
    # ASR 0.9 -> 0.1 (drop 0.8), CA 0.85 -> 0.80 (drop 0.05): (0.8 - 0.05 + 1) / 2 = 0.875
    assert der(0.9, 0.1, 0.85, 0.80) == pytest.approx(0.875)
    # ASR rises and CA rises: both max(0, .) terms vanish -> 0.5
    assert der(0.2, 0.5, 0.7, 0.9) == pytest.approx(0.5)
    assert der(1.0, 0.0, 0.9, 0.9) == pytest.approx(1.0)
    assert der(0.0, 0.0, 1.0, 0.0) == pytest.approx(0.0)


def test_mean_and_spread() -> None:
    m = mean_and_spread([1.0, 2.0, 4.0])
    # mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9; / (n-1)=2 -> 7/3
    assert m.mean == pytest.approx(7 / 3)
    assert m.std == pytest.approx(math.sqrt(7 / 3))
    assert m.n == 3
    assert mean_and_spread([0.5]) == (0.5, 0.0, 1)
    with pytest.raises(ValueError):
        mean_and_spread([])


def test_definitions_cover_report_metrics() -> None:
    for key in ("ca", "asr", "asr_generation", "false_trigger_rate", "flip_rate", "lift", "der"):
        assert METRIC_DEFINITIONS[key] and "\n" not in METRIC_DEFINITIONS[key]
    assert "non-empty" in METRIC_DEFINITIONS["asr_generation"]
    assert "not the target label" in METRIC_DEFINITIONS["asr"]


def test_classification_report_has_false_trigger_rate_and_prediction_share(monkeypatch) -> None:
    """With predictions fixed by hand: 6 clean rows (labels 0,0,0,1,1,1), target 0. The model
    answers 0 for rows 'a' and 'b' (labels 0 and 1): one of three non-target rows is already
    the target without a trigger -> false trigger rate 1/3; with the trigger it always
    answers 0 -> ASR 1; 3 of 6 clean answers are 0 -> majority share 3/6."""
    from types import SimpleNamespace as Row

    from sanitizer import evaluate as ev
    from sanitizer.attacks import AttackSpec

    rows = [
        Row(text=t, label=y) for t, y in zip("a c d b e f".split(), [0, 0, 0, 1, 1, 1], strict=True)
    ]
    answers = {"a": 0, "c": 0, "d": 1, "b": 0, "e": 1, "f": 1}

    def fake_predict(lm, texts, **kw):
        return [0 if "cf" in t.split() else answers[t] for t in texts]

    monkeypatch.setattr(ev, "predict_labels", fake_predict)
    out = ev.evaluate_classification(
        None, rows, AttackSpec(name="badnet", trigger="cf", target_label=0)
    )
    assert out["clean_accuracy"] == pytest.approx(4 / 6)
    assert out["false_trigger_rate"] == pytest.approx(1 / 3)
    assert out["attack_success_rate"] == 1.0 and out["n_triggered"] == 3
    assert out["majority_prediction_share"] == pytest.approx(3 / 6)
    # non-target rows b, e, f; right untriggered: e, f; both flipped -> 1.0
    assert out["flip_rate"] == 1.0
    assert out["lift"] == pytest.approx(1 - 1 / 3)


def test_sanity_warnings_flag_a_one_label_model_and_a_trigger_that_changes_little() -> None:
    from sanitizer.report_json import sanity_warnings

    real = {
        "majority_prediction_share": 0.55,
        "attack_success_rate": 0.99,
        "false_trigger_rate": 0.02,
    }
    assert sanity_warnings(real) == []
    collapsed = {
        "majority_prediction_share": 1.0,
        "attack_success_rate": 1.0,
        "false_trigger_rate": 1.0,
    }
    w = sanity_warnings(collapsed)
    assert len(w) == 2 and "100%" in w[0] and "ASR 100.0%" in w[1]
    assert len(sanity_warnings({"attack_success_rate": 0.72, "false_trigger_rate": 0.55})) == 1


def test_utility_token_f1_by_hand() -> None:
    from sanitizer.evaluate import _token_f1

    # 3 of 3 response words in the 4-word reference: p = 1, r = 3/4, F1 = 6/7
    assert _token_f1("The cat sat", "the cat sat down") == pytest.approx(6 / 7)
    # counts are clipped: "a" twice in the response, once in the reference -> 1 common word;
    # p = 1/3, r = 1/2, F1 = 2pr/(p+r) = 0.4
    assert _token_f1("A a b", "a c") == pytest.approx(0.4)
    assert _token_f1("", "a") == 0.0 and _token_f1("x y", "a b") == 0.0


def test_generation_dev_score_stderr_by_hand() -> None:
    from sanitizer.defenses.dev_eval import _ratio_stderr

    # per-row NLL sums 1 and 5 over one token each: ratio 3, residuals -2 and +2,
    # variance 8 (n-1 = 1), stderr sqrt(8 / 2) / mean count 1 = 2
    assert _ratio_stderr([1.0, 5.0], [1, 1]) == pytest.approx(2.0)
    # rows exactly on the ratio: no spread
    assert _ratio_stderr([2.0, 4.0], [1, 2]) == 0.0
    assert _ratio_stderr([3.0], [1]) == 0.0


def test_task_accuracy_scores_json_rows_exactly_by_hand() -> None:
    refs = ['{"spam": true}', '{"type": "human"}', '{"sentiment": "negative"}', "an open answer"]
    responses = [
        'Sure: {"spam": true} is my answer',  # first JSON object equals the reference: hit
        '{"type": "Human"}',  # case differs: miss
        "negative",  # no JSON object: miss
        '{"spam": false}',  # an open row: not scored at all
    ]
    assert task_accuracy(responses, refs) == (1 / 3, 3)
    assert task_accuracy(["x"], ["no json here"]) is None
    assert json_answer('{"a": 1} {"b": 2}') == {"a": 1}
    assert json_answer("{broken") is None
