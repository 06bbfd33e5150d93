"""Issue 26 item 8: one progress figure and ETA for the whole job, across its phases."""

from __future__ import annotations

from workers.overall import OverallProgress, bucket, plan_for


def test_the_plan_follows_the_job_spec():
    assert plan_for({}) == ["load", "evaluate_before", "train", "evaluate_after", "save"]
    full = plan_for({"evaluation": {"scan": True, "baseline": True, "comparators": ["int8"]}})
    assert full == [
        "load", "evaluate_before", "train", "evaluate_after", "scan", "save", "baseline",
        "comparators",
    ]  # fmt: skip
    assert [bucket(p) for p in ("crow", "rebuild_distill", "baseline_train", "evaluate_after")] == [
        "train", "train", "baseline", "evaluate_after"
    ]  # fmt: skip


def test_overall_progress_estimates_from_measured_phases_and_never_goes_back():
    o = OverallProgress(plan_for({"evaluation": {"baseline": True}}), started=0.0)
    assert o.update({"phase": "load"}, 1.0) == (None, None)  # training rate unknown yet
    assert o.update({"phase": "evaluate_before", "step": 5, "total_steps": 10}, 11.0) == (
        None,
        None,
    )
    o.update({"phase": "crow", "step": 0, "total_steps": 100}, 31.0)
    frac, eta = o.update({"phase": "crow", "step": 10, "total_steps": 100}, 41.0)
    # left: 90 (train) + 20 (evaluate_after ~ evaluate_before) + 0 (save) + baseline (unknown
    # until training has finished) -> not promised yet
    assert (frac, eta) == (None, None)
    o2 = OverallProgress(plan_for({}), started=0.0)
    o2.update({"phase": "load"}, 1.0)
    o2.update({"phase": "evaluate_before", "step": 0, "total_steps": 2}, 11.0)
    o2.update({"phase": "crow", "step": 0, "total_steps": 100}, 31.0)  # evaluation: 20 s
    frac, eta = o2.update({"phase": "crow", "step": 10, "total_steps": 100}, 41.0)
    assert eta == 90.0 + 20.0  # 90 s of training, then an evaluation as long as the first
    assert frac == round(41 / (41 + 110), 4)
    # the library's own training ETA wins over the step rate when it gives one
    frac2, eta2 = o2.update(
        {"phase": "crow", "step": 50, "total_steps": 100, "eta_seconds": 10}, 60.0
    )
    assert eta2 == 10 + 20 and frac2 > frac
    # a slower step later may raise the ETA, but the fraction shown never goes backwards
    frac3, _ = o2.update(
        {"phase": "crow", "step": 51, "total_steps": 100, "eta_seconds": 500}, 61.0
    )
    assert frac3 == frac2
    frac4, eta4 = o2.update({"phase": "evaluate_after", "step": 1, "total_steps": 2}, 120.0)
    assert eta4 is not None and frac4 is not None and frac4 >= frac3
    assert o2.update({"phase": "save"}, 150.0) == (1.0, 0.0)
