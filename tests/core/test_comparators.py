"""Zero-training comparators (docs/METHODS_NOTES.md, zero-training comparators): the edits against hand-computed values, what they
touch, that they are undone, and the job that measures them."""

from __future__ import annotations

import pytest
import torch

from sanitizer.comparators import applied, backbone_linears, magnitude_prune_, quantize_
from sanitizer.tiny import build_tiny_model


def test_magnitude_prune_zeroes_the_smallest_entries():
    w = torch.tensor([[0.5, -0.1, 0.3], [-0.2, 0.05, 0.9]])
    assert magnitude_prune_(w, 0.5) == 3  # round(0.5 * 6)
    assert torch.equal(w, torch.tensor([[0.5, 0.0, 0.3], [0.0, 0.0, 0.9]]))
    w = torch.tensor([[1.0, -2.0, 3.0, -4.0]])
    assert magnitude_prune_(w, 0.35) == 1  # round(1.4)
    assert torch.equal(w, torch.tensor([[0.0, -2.0, 3.0, -4.0]]))
    with pytest.raises(ValueError, match="sparsity"):
        magnitude_prune_(w, 1.0)


def test_quantize_rounds_each_row_to_its_own_grid():
    # 2 bits: q in {-1, 0, 1}, scale = max|row|
    w = torch.tensor([[0.4, -0.1, 0.3], [-0.6, 0.2, 0.35]])
    quantize_(w, 2)
    assert torch.allclose(w, torch.tensor([[0.4, 0.0, 0.4], [-0.6, 0.0, 0.6]]))
    # 8 bits: every entry within half a step of the original, at most 255 levels per row
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(4, 300, generator=g)
    w = w0.clone()
    quantize_(w, 8)
    step = w0.abs().amax(dim=1, keepdim=True) / 127
    assert torch.all((w - w0).abs() <= step / 2 + 1e-7)
    assert not torch.equal(w, w0)
    assert all(len(torch.unique(row)) <= 255 for row in w)
    with pytest.raises(ValueError, match="bits"):
        quantize_(w, 1)


@pytest.fixture()
def tiny_lora(tmp_path, monkeypatch):
    """A tiny classifier with a fresh LoRA on every Linear (as a defense's model is)."""
    from sanitizer.models import add_lora, load_model

    build_tiny_model(tmp_path / "store", "tiny/bert", "bert")
    monkeypatch.setenv("SANITIZER_MODEL_STORE", str(tmp_path / "store"))
    lm = load_model("tiny/bert", "classification", num_labels=2, device="cpu")
    add_lora(lm, r=4, alpha=4, dropout=0.0, target="all-linear")
    return lm


def test_applied_edits_the_backbone_only_and_undoes_it(tiny_lora):
    model = tiny_lora.model
    names = [n for n, _ in backbone_linears(model)]
    assert names and all("classifier" not in n and "lora_" not in n for n in names)
    assert any(n.endswith("base_layer") for n in names)  # PEFT-wrapped Linears are edited
    state = {k: v.clone() for k, v in model.state_dict().items()}
    backbone = {f"{n}.weight" for n in names}
    with applied(model, "prune"):
        now = model.state_dict()
        changed = {k for k in state if not torch.equal(state[k], now[k])}
        assert changed == backbone  # heads, embeddings, biases and LoRA untouched
        for k in backbone:
            zeros = (now[k] == 0).float().mean().item()
            assert zeros == pytest.approx(0.35, abs=0.01)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(RuntimeError, match="boom"), applied(model, "int4"):
        raise RuntimeError("boom")
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="unknown comparator"), applied(model, "int3"):  # type: ignore[arg-type]
        pass


@torch.no_grad()
def test_int8_keeps_the_outputs_and_pruning_moves_them(tiny_lora):
    model = tiny_lora.model.eval()
    ids = torch.randint(6, 60, (4, 12), generator=torch.Generator().manual_seed(1))
    ref = model(input_ids=ids).logits
    with applied(model, "int8"):
        q8 = model(input_ids=ids).logits
    with applied(model, "prune"):
        pruned = model(input_ids=ids).logits
    err8 = (q8 - ref).abs().max().item()
    err_prune = (pruned - ref).abs().max().item()
    assert 0 < err8 < 0.05 * ref.abs().max().item()
    assert err_prune > 10 * err8


def test_comparator_job_measures_the_unedited_model_then_each_edit(tmp_path, monkeypatch):
    """The benchmark's prune/int8/int4 rows: ``before`` is the model as given, each comparator
    is measured with its edit, and the job refuses to run with none asked for."""
    from sanitizer.attacks import AttackSpec
    from sanitizer.errors import ConfigError
    from sanitizer.jobspec import JobSpec
    from sanitizer.measure_jobs import run_comparator_job, run_evaluate
    from sanitizer.tiny import write_sentiment_csv

    build_tiny_model(tmp_path / "store", "tiny/bert", "bert")
    monkeypatch.setenv("SANITIZER_MODEL_STORE", str(tmp_path / "store"))
    clean = write_sentiment_csv(tmp_path / "clean.csv", 30, 1)
    test = write_sentiment_csv(tmp_path / "test.csv", 30, 2)
    attack = AttackSpec(name="badnet", trigger="cf", target_label=0)
    spec = JobSpec(
        method="finetune", base_model="tiny/bert", clean_data=clean, test_data=test,
        attack=attack, comparators=["int8", "prune"], device="cpu",
    )  # fmt: skip
    res = run_comparator_job(spec)
    assert list(res["comparators"]) == ["int8", "prune"]
    direct = run_evaluate("tiny/bert", test, "classification", attack, device="cpu")
    for k in ("clean_accuracy", "attack_success_rate", "false_trigger_rate"):
        assert res["before"][k] == direct[k], k
    for c in res["comparators"].values():
        assert c["metrics"]["after"]["n_clean"] == 30 and c["timings"]["evaluate_s"] > 0
    with pytest.raises(ConfigError, match="no comparators"):
        run_comparator_job(spec.model_copy(update={"comparators": []}))
