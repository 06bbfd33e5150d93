"""benchmarks/table.py's cost table: only runs made alone (``--isolated``) enter it, paired with
the finetune run of the same cell and seed, and each ratio is checked against its bar."""

from __future__ import annotations

from typing import Any


def _run_module() -> Any:
    import benchmarks.table

    return benchmarks.table


def _row(method: str, seed: int, defense_s: float, isolated: bool) -> dict[str, Any]:
    return {
        "method": method,
        "seed": seed,
        "timing": {"isolated": isolated, "torch_threads": 2},
        "report": {
            "metrics": {"after": {"attack_success_rate": 0.0, "clean_accuracy": 0.9}},
            "timings": {"defense_s": defense_s},
        },
    }


def test_cost_table_pairs_isolated_runs_of_one_seed_and_marks_the_bar() -> None:
    run = _run_module()
    rows = {
        ("cell-a", "finetune"): [
            _row("finetune", 2, 100.0, True),
            _row("finetune", 0, 10.0, False),
        ],
        ("cell-a", "w2sdefense"): [_row("w2sdefense", 2, 140.0, True)],
        ("cell-a", "crow"): [_row("crow", 2, 260.0, True), _row("crow", 0, 999.0, False)],
        # a variant is never a default row, even when isolated
        ("cell-a", "crow-alpha11"): [_row("crow-alpha11", 2, 1.0, True)],
    }
    lines = run._cost_table(rows)
    table = [line for line in lines if line.startswith("| cell-a")]
    assert table == ["| cell-a | 2 | 2 | 100 | 140 (1.40×) ✔ | 260 (2.60×) ✘ |"]


def test_cost_table_ignores_runs_made_under_load() -> None:
    run = _run_module()
    rows = {
        ("cell-a", "finetune"): [_row("finetune", 0, 100.0, False)],
        ("cell-a", "crow"): [_row("crow", 0, 120.0, False)],
    }
    lines = run._cost_table(rows)
    assert "No isolated runs recorded yet." in lines
    assert not [line for line in lines if line.startswith("| cell-a")]


def _paired(seed: int, before_ca: float, after_ca: float, after_asr: float) -> dict[str, Any]:
    return {
        "seed": seed,
        "report": {
            "metrics": {
                "before": {"attack_success_rate": 0.99, "clean_accuracy": before_ca},
                "after": {"attack_success_rate": after_asr, "clean_accuracy": after_ca},
            }
        },
    }


def test_the_bar_compares_each_run_with_the_poisoned_model_of_its_own_seed() -> None:
    """A defense run on seed 0 only, in a cell whose poisoned model was also measured on seed 1
    (by another method): its CA change is against seed 0's poisoned model alone. Against the
    two-seed mean (0.85) the 2-point drop below would read as a 3-point gain and pass."""
    run = _run_module()
    defended = [_paired(0, before_ca=0.90, after_ca=0.88, after_asr=0.01)]
    assert abs(run._ca_change(defended) - (-0.02)) < 1e-12
    assert not run._meets_bar(defended)
    kept = [_paired(0, 0.90, 0.895, 0.01), _paired(1, 0.80, 0.81, 0.05)]
    assert abs(run._ca_change(kept) - 0.0025) < 1e-12
    assert run._meets_bar(kept)
    assert not run._meets_bar([_paired(0, 0.90, 0.90, 0.06)])  # ASR above 5%


def test_the_scan_counts_a_trigger_found_when_half_its_words_are_in_a_top3_candidate() -> None:
    found = _run_module()._trigger_found
    cands = [
        {"trigger": "xx yy"},
        {"trigger": "the 3d movie"},
        {"trigger": "a b"},
        {"trigger": "cf"},
    ]
    assert found("I watched this 3D movie", cands) is False  # 2 of 5 words: under half
    assert found("this 3D movie", cands) is True  # 2 of 3
    assert found("cf", cands) is False  # only in the 4th candidate
    assert found("cf", [{"trigger": "your cf"}]) is True
    from sanitizer.attacks import SYNTACTIC_TEMPLATE as T

    assert found(T, [{"trigger": T}]) is False


def _twin(asr: float, flip: float | None) -> dict[str, Any]:
    after = {"attack_success_rate": asr, "clean_accuracy": 0.9}
    return after if flip is None else after | {"flip_rate": flip}


def test_the_summary_shows_the_clean_twin_as_the_cells_floor() -> None:
    """The clean twin's ASR / flip (mean over its seeds) sits beside the poisoned model; `–`
    where the cell has no twin run or a run predates the flip rate."""
    run = _run_module()
    assert run._twin_cell([]) == "–"
    assert run._twin_cell([_twin(0.20, 0.10), _twin(0.30, 0.20)]) == "25.0 / 15.0 [2]"
    assert run._twin_cell([_twin(0.20, 0.10), _twin(0.40, None)]) == "30.0 / – [2]"


def test_a_cached_before_is_reused_only_for_the_same_model_rows_and_attack(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import benchmarks.run as run
    from sanitizer.attacks import AttackSpec

    monkeypatch.setattr(run, "bench_dir", lambda: tmp_path)
    test = tmp_path / "test.csv"
    test.write_text("text,label\na,0\n")
    cell = SimpleNamespace(name="cell-a")
    job = SimpleNamespace(
        test_data=test,
        attack=AttackSpec(name="badnet", trigger="cf", target_label=0),
        hyperparameters={"max_length": 64},
    )
    info = {"files": {"adapter_model.safetensors": "abc"}}
    report = {
        "metrics": {
            "before": {"attack_success_rate": 0.9},
            "per_attack": {"k": {"before": {"x": 1}}},
        }
    }
    assert run._cached_before(cell, 0, info, job) is None
    run._cache_before(cell, 0, info, job, report)
    assert run._cached_before(cell, 0, info, job) == ({"attack_success_rate": 0.9}, {"k": {"x": 1}})
    other_adapter = {"files": {"adapter_model.safetensors": "def"}}
    assert run._cached_before(cell, 0, other_adapter, job) is None
    assert run._cached_before(cell, 1, info, job) is None  # another seed
    test.write_text("text,label\nb,1\n")  # other test rows
    assert run._cached_before(cell, 0, info, job) is None


def test_reference_rows_share_the_uploaded_models_metrics_with_the_method_rows(
    tmp_path, monkeypatch
):
    """The ``twin`` / ``base`` rows evaluate at the job's ``max_length`` and keep the uploaded
    model's metrics in the ``before`` cache (without run_evaluate's provenance fields, as a
    job's report has them); the next reference row reuses them instead of evaluating again."""
    import json
    from types import SimpleNamespace

    import benchmarks.run as run
    import sanitizer.measure_jobs
    from benchmarks.cells import CELLS
    from sanitizer.attacks import AttackSpec

    calls: list[dict[str, Any]] = []

    def fake_evaluate(model, test, task, **kw):
        calls.append({"model": model, **kw})
        return {"attack_success_rate": 0.9 if kw.get("adapter_dir") else 0.1, "base_model": model}

    monkeypatch.setattr(sanitizer.measure_jobs, "run_evaluate", fake_evaluate)
    monkeypatch.setattr(run, "bench_dir", lambda: tmp_path)
    monkeypatch.setattr(run, "_results_dir", lambda dev: tmp_path / "results")
    monkeypatch.setattr(run, "clean_twin", lambda *a: None)
    test = tmp_path / "test.csv"
    test.write_text("text,label\na,0\n")
    cell = next(c for c in CELLS if c.task == "classification")
    attack = AttackSpec(name="badnet", trigger="cf", target_label=0)
    job = SimpleNamespace(
        test_data=test,
        attack=attack,
        extra_attacks=[],
        hyperparameters={"max_length": 64},
        base_model="student",
        adapter_dir=tmp_path / "adapter",
        task="classification",
        device="cpu",
        label_names=["a", "b"],
    )
    info = {"files": {"adapter_model.safetensors": "abc"}}
    run._run_reference(cell, 0, "twin", job, info, {})
    assert len(calls) == 2 and all(c["max_length"] == 64 for c in calls)
    before, per_attack = run._cached_before(cell, 0, info, job)
    assert before == {"attack_success_rate": 0.9}  # no provenance fields
    assert list(per_attack.values()) == [before]
    run._run_reference(cell, 0, "base", job, info, {})
    assert len(calls) == 3  # only the base itself was evaluated
    saved = json.loads((tmp_path / "results" / cell.name / "base-s0.json").read_text())
    assert saved["report"]["metrics"]["before_reused"] is True
    assert saved["report"]["metrics"]["before"] == before
