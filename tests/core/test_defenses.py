"""Defense mechanics on tiny random models built in code (fast, no assets)."""

from __future__ import annotations

import math
import random
import types

import pytest
import torch
import torch.nn.functional as F

from sanitizer.adapter_files import combine_lora_into_one
from sanitizer.defenses import METHODS
from sanitizer.defenses.batching import make_batch
from sanitizer.defenses.common import pooled_feature, validate_config
from sanitizer.defenses.crow import consistency_loss
from sanitizer.defenses.dev_eval import dev_stats
from sanitizer.defenses.w2sdefense import kd_loss
from sanitizer.errors import ConfigError
from sanitizer.models import (
    add_lora,
    load_model,
    save_adapter,
    select_device,
)
from sanitizer.tiny import build_tiny_model

torch.set_num_threads(2)

Row = types.SimpleNamespace


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("store")
    build_tiny_model(path, "tiny/bert", "bert")
    build_tiny_model(path, "tiny/llama", "llama")
    build_tiny_model(path, "tiny/teacher", "bert", hidden_size=16, num_layers=2, seed=1)
    return path


@pytest.fixture(autouse=True)
def _model_store(store, monkeypatch):
    monkeypatch.setenv("SANITIZER_MODEL_STORE", str(store))


def _rows(n: int, seed: int = 0) -> list[Row]:
    rng = random.Random(seed)
    pos, neg = "good great fine love best".split(), "bad awful dull hate worst".split()
    fill = "the a movie film story plot it was".split()
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = [rng.choice(fill) for _ in range(5)] + [rng.choice(pos if label else neg)]
        rng.shuffle(words)
        rows.append(Row(text=" ".join(words), label=label))
    return rows


def _gen_rows(n: int) -> list[Row]:
    return [
        Row(instruction="tell me about the movie", input="", output="it was good") for _ in range(n)
    ]


# ---------------------------------------------------------------- loss terms by hand


def test_consistency_loss_matches_hand_computation():
    torch.manual_seed(0)
    hs = [torch.randn(2, 3, 4) for _ in range(5)]  # embeddings, 3 layers, final
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # pairs (1,2) and (2,3) only; real tokens only
    total, count = 0.0, 0
    for a, b in ((hs[1], hs[2]), (hs[2], hs[3])):
        for i in range(2):
            for t in range(3):
                if mask[i, t]:
                    cos = float(torch.dot(a[i, t], b[i, t]) / (a[i, t].norm() * b[i, t].norm()))
                    total += 1 - cos
                    count += 1
    assert float(consistency_loss(hs, mask)) == pytest.approx(total / count, rel=1e-5)
    # without a mask every position counts (the released code)
    unmasked = torch.stack(
        [1 - F.cosine_similarity(a, b, dim=-1) for a, b in ((hs[1], hs[2]), (hs[2], hs[3]))]
    ).mean()
    assert float(consistency_loss(hs, None)) == pytest.approx(float(unmasked), rel=1e-6)


def test_kd_loss_matches_formula():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[0.2, 1.5, 1.0]])
    tau = 2.0
    p_t = torch.softmax(t / tau, -1)
    p_s = torch.softmax(s / tau, -1)
    expected = tau**2 * float((p_t * (p_t.log() - p_s.log())).sum())
    assert float(kd_loss(s, t, tau)) == pytest.approx(expected, rel=1e-5)


def test_pooled_feature_reads_last_real_token_for_decoders_and_first_for_encoders(store):
    lm = load_model("tiny/llama", "classification", num_labels=2, device="cpu")
    hidden = torch.arange(2 * 4 * 1, dtype=torch.float).view(2, 4, 1)
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    assert pooled_feature(lm, hidden, left).flatten().tolist() == [3.0, 7.0]
    assert pooled_feature(lm, hidden, right).flatten().tolist() == [1.0, 7.0]
    enc = load_model("tiny/bert", "classification", num_labels=2, device="cpu")
    assert pooled_feature(enc, hidden, right).flatten().tolist() == [0.0, 4.0]


# ---------------------------------------------------------------- configs and devices


def test_config_errors_name_the_field():
    cfg_cls = METHODS["crow"][0]
    with pytest.raises(ConfigError) as exc:
        validate_config(cfg_cls, {"epochs": 0, "alpha": -1})
    assert "epochs" in exc.value.message and "alpha" in exc.value.message
    with pytest.raises(ConfigError) as exc:
        validate_config(cfg_cls, {"learning_rat": 1e-3})
    assert "learning_rat" in exc.value.message
    assert "learning_rate" in (exc.value.hint or "")
    # every method's schedule is one of the three the loop implements (a typo is refused,
    # not run as some other schedule)
    for name, (cls, *_) in METHODS.items():
        with pytest.raises(ConfigError) as exc:
            validate_config(cls, {"schedule": "cosin"})
        assert "schedule" in exc.value.message, name
    assert validate_config(cfg_cls, {}).schedule == "cosine"


def test_defaults_follow_methods_md():
    crow = validate_config(METHODS["crow"][0], {})
    assert (crow.alpha, crow.epsilon, crow.learning_rate, crow.lora_r, crow.lora_alpha) == (
        5.5,
        0.1,
        1e-3,
        8,
        16,
    )
    w2s = validate_config(METHODS["w2sdefense"][0], {})
    assert w2s.temperature == 2.0 and (w2s.lambda_ce, w2s.lambda_kd, w2s.lambda_fa) == (
        1.0,
        0.035,
        0.002,
    )
    assert w2s.fa_normalize == "layernorm" and w2s.teacher_learning_rate == 1e-4  # product defaults


def test_select_device():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError):
            select_device("cuda")


# ---------------------------------------------------------------- training mechanics


def _lora_model(arch: str, task: str = "classification", r: int = 4):
    lm = load_model(
        f"tiny/{arch}", task, num_labels=2 if task == "classification" else None, device="cpu"
    )
    add_lora(lm, r=r, alpha=r, dropout=0.0, target="all-linear")
    return lm


@pytest.mark.parametrize("method", ["finetune", "crow", "w2sdefense", "beear"])
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_only_adapter_and_head_move(method, arch):
    lm = _lora_model(arch)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    cfg = validate_config(
        METHODS[method][0],
        {
            "epochs": 1,
            "max_steps": 3,
            "batch_size": 8,
            "learning_rate": 1e-2,
            "teacher_model": "tiny/teacher",
            "teacher_epochs": 1,
        }
        if method == "w2sdefense"
        else {"epochs": 1, "max_steps": 3, "batch_size": 8, "learning_rate": 1e-2},
    )
    stats = METHODS[method][1](lm, _rows(24), _rows(8, seed=1), cfg)
    assert stats["steps"] == 3
    moved_lora = moved_frozen = 0
    for n, p in lm.model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        if p.requires_grad:
            moved_lora += int(changed and "lora_B" in n)
        else:
            moved_frozen += int(changed)
    assert moved_lora > 0, "no LoRA weight was updated"
    assert moved_frozen == 0, "a frozen base weight changed"
    losses = [
        h["losses"] for h in stats["history"] if "losses" in h and h.get("phase") == "defense"
    ]
    assert all(math.isfinite(v) for term in losses for v in term.values())


@pytest.mark.parametrize("method", ["finetune", "crow", "w2sdefense", "beear"])
def test_generation_defenses_train(method):
    lm = _lora_model("llama", task="generation")
    hp = {"epochs": 1, "max_steps": 2, "batch_size": 4, "learning_rate": 1e-2}
    if method == "w2sdefense":
        hp |= {"teacher_model": "tiny/llama", "teacher_epochs": 1}
    stats = METHODS[method][1](
        lm, _gen_rows(8), _gen_rows(4), validate_config(METHODS[method][0], hp)
    )
    assert stats["steps"] == 2
    assert stats["best_dev_score"] is not None and stats["best_dev_score"] < 0  # minus a mean NLL


def test_generation_dev_score_is_the_mean_nll_per_response_token_whatever_the_batch():
    """-sum(token NLL) / response tokens, computed by hand one row at a time; rows of different
    response lengths, so a per-batch mean weighted by rows would differ."""
    lm = _lora_model("llama", task="generation")
    rows = [
        Row(instruction="tell me about the movie", input="", output=out)
        for out in ("good", "it was a long and dull story", "fine", "great plot twist")
    ]
    sums, counts = [], []
    with torch.no_grad():
        for r in rows:
            b = make_batch(lm, [r], 64)
            logits = lm.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            logp = F.log_softmax(logits[0, :-1].float(), dim=-1)
            sums.append(0.0)
            counts.append(0)
            for pos, target in enumerate(b["labels"][0, 1:].tolist()):
                if target != -100:
                    sums[-1] -= float(logp[pos, target])
                    counts[-1] += 1
    nll, tokens = sum(sums), sum(counts)
    for batch_size in (1, 3, None):
        assert dev_stats(lm, rows, 64, batch_size=batch_size)[0] == pytest.approx(
            -nll / tokens, rel=1e-5
        )
    # its standard error for select_tolerance="stderr": the ratio estimator's, over rows
    r, n = nll / tokens, len(rows)
    var = sum((s - r * c) ** 2 for s, c in zip(sums, counts, strict=True)) / (n - 1)
    _, stderr = dev_stats(lm, rows, 64, batch_size=3)
    assert stderr == pytest.approx(math.sqrt(var / n) / (tokens / n), rel=1e-4)
    assert stderr > 0


def test_classification_dev_stats_are_accuracy_and_its_binomial_stderr():
    lm = _lora_model("bert")
    rows = _rows(40, 3)
    score, stderr = dev_stats(lm, rows, 64)
    lm.model.eval()  # dev_stats evaluates without dropout, and restores the training mode
    with torch.no_grad():
        b = make_batch(lm, rows, 64)
        labels = b.pop("labels")
        acc = float((lm.model(**b).logits.argmax(-1) == labels).float().mean())
    assert score == pytest.approx(acc)
    assert stderr == pytest.approx(math.sqrt(acc * (1 - acc) / 40))


def test_same_seed_same_adapter(tmp_path):
    outs = []
    for i in range(2):
        torch.manual_seed(123)  # the LoRA init is seeded by the caller (pipeline.set_seed)
        lm = _lora_model("bert")
        cfg = validate_config(
            METHODS["crow"][0], {"epochs": 1, "max_steps": 3, "batch_size": 8, "seed": 7}
        )
        METHODS["crow"][1](lm, _rows(24), [], cfg)
        save_adapter(lm, tmp_path / str(i))
        outs.append((tmp_path / str(i) / "adapter_model.safetensors").read_bytes())
    assert outs[0] == outs[1]


def test_combined_adapter_equals_merged_plus_fresh(tmp_path):
    """merge_fresh output: one adapter over the *base* reproducing base+uploaded+fresh."""
    from peft import PeftModel

    torch.manual_seed(0)
    lm = _lora_model("bert", r=4)
    for n, p in lm.model.named_parameters():  # make both LoRA factors non-zero
        if "lora_" in n or "modules_to_save" in n:
            p.data.normal_(0, 0.1)
    save_adapter(lm, tmp_path / "poisoned")
    lm.model = lm.model.merge_and_unload()
    add_lora(lm, r=2, alpha=4, dropout=0.0, target="attention")
    for n, p in lm.model.named_parameters():
        if "lora_" in n or "modules_to_save" in n:
            p.data.normal_(0, 0.1)
    save_adapter(lm, tmp_path / "fresh")
    x = lm.tokenizer(["the movie was good", "bad plot"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = lm.model(**x).logits
    combine_lora_into_one(tmp_path / "poisoned", tmp_path / "fresh", tmp_path / "combined")
    base = load_model("tiny/bert", "classification", num_labels=2, device="cpu")
    combined = PeftModel.from_pretrained(base.model, tmp_path / "combined").eval()
    with torch.no_grad():
        got = combined(**x).logits
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("scale", [0.0, 0.5])
def test_scaled_merge_shrinks_the_uploaded_delta_and_the_combined_adapter_matches(tmp_path, scale):
    """adapter_scale=s merges W + s·ΔW (the head, which has no base value, is kept whole), and
    the written adapter reproduces base + s·uploaded + fresh."""
    from peft import PeftModel

    from sanitizer.models import load_adapter

    torch.manual_seed(0)
    lm = _lora_model("bert", r=4)
    for n, p in lm.model.named_parameters():
        if "lora_" in n or "modules_to_save" in n:
            p.data.normal_(0, 0.1)
    save_adapter(lm, tmp_path / "poisoned")

    def merged(s):
        m = load_model("tiny/bert", "classification", num_labels=2, device="cpu")
        load_adapter(m, tmp_path / "poisoned", "merge_fresh", scale=s)
        return m

    base = load_model("tiny/bert", "classification", num_labels=2, device="cpu").model
    full, shrunk = merged(1.0).model.state_dict(), merged(scale)
    base_sd = base.state_dict()
    changed = 0
    for k, w in shrunk.model.state_dict().items():
        if k.startswith("classifier"):
            assert torch.equal(w, full[k]), k
        else:
            assert torch.allclose(w, base_sd[k] + scale * (full[k] - base_sd[k]), atol=1e-6), k
            changed += int(not torch.equal(full[k], base_sd[k]))
    assert changed > 0  # the adapter did move backbone weights
    assert shrunk.adapter_info["scale"] == scale

    add_lora(shrunk, r=2, alpha=4, dropout=0.0, target="attention")
    for n, p in shrunk.model.named_parameters():
        if "lora_" in n:
            p.data.normal_(0, 0.1)
    save_adapter(shrunk, tmp_path / "fresh")
    x = shrunk.tokenizer(["the movie was good", "bad plot"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = shrunk.model(**x).logits
    combine_lora_into_one(
        tmp_path / "poisoned", tmp_path / "fresh", tmp_path / "combined", base_scale=scale
    )
    combined = PeftModel.from_pretrained(base, tmp_path / "combined").eval()
    with torch.no_grad():
        assert torch.allclose(combined(**x).logits, expected, atol=1e-5)


def test_adapter_scale_needs_a_merged_adapter():
    with pytest.raises(ConfigError, match="adapter_scale"):
        validate_config(
            METHODS["w2sdefense"][0], {"adapter_scale": 0.5, "adapter_mode": "continue"}
        )
    with pytest.raises(ConfigError, match="adapter_scale"):
        validate_config(METHODS["crow"][0], {"adapter_scale": 1.5})
    assert validate_config(METHODS["crow"][0], {"adapter_scale": 0.5}).adapter_scale == 0.5


@pytest.mark.parametrize(
    "last,tolerance,chosen",
    [
        (0.89, 0.0, 1),
        (0.89, None, 4),
        (0.89, 0.005, 1),
        (0.89, 0.3, 4),
        (0.89, "stderr", 4),
        (0.86, None, 2),
        (0.86, "stderr", 4),
        (0.84, "stderr", 2),
    ],
    ids=str,
)
def test_checkpoint_selection_keeps_the_latest_epoch_within_tolerance(
    monkeypatch, last, tolerance, chosen
):
    """Dev scores 0.80, 0.90, 0.88, 0.70, `last` over five epochs with 40 dev rows: the strict
    best is epoch 1; within one dev example (None: 1/40 = 0.025) the latest is epoch 4 when
    last=0.89, epoch 2 when 0.86; within the best's binomial standard error ("stderr":
    sqrt(0.9 * 0.1 / 40) = 0.047) 0.86 still counts and 0.84 does not; the restored weights
    are the chosen epoch's."""
    from sanitizer.defenses import common

    scores = iter([0.80, 0.90, 0.88, 0.70, last])

    def stats(*a, **k):
        s = next(scores)
        return s, math.sqrt(s * (1 - s) / 40)

    monkeypatch.setattr(common, "dev_stats", stats)
    lm = load_model("tiny/bert", "classification", num_labels=2, device="cpu")
    add_lora(lm, r=4, alpha=4, dropout=0.0, target="attention")
    snapshots = []

    def step_loss(lm, batch, rows):
        out = lm.model(**batch)
        return F.cross_entropy(out.logits, batch["labels"]), {}

    def on_epoch(e):
        if e.message == "epoch done":
            snapshots.append({n: p.detach().clone() for n, p in lm.model.named_parameters()})

    cfg = validate_config(
        METHODS["finetune"][0],
        {"epochs": 5, "batch_size": 8, "learning_rate": 1e-2, "select_tolerance": tolerance},
    )
    stats = common.train(lm, _rows(16), _rows(40, 1), cfg, step_loss, progress=on_epoch)
    assert stats["best_epoch"] == chosen and stats["max_dev_score"] == 0.90
    if tolerance == "stderr":
        assert stats["select_tolerance"] == pytest.approx(math.sqrt(0.09 / 40))
    for n, p in lm.model.named_parameters():
        assert torch.equal(p, snapshots[chosen][n]), n


# ---------------------------------------------------------------- activation checkpointing


def _train_counting_layer_calls(method: str, checkpointing: bool):
    """Train ``method`` a few steps on a tiny generation Llama; returns the trained LoRA weights,
    how often the first decoder layer's attention ran, and the model."""
    torch.manual_seed(5)
    lm = _lora_model("llama", task="generation")
    calls = [0]
    layer = lm.model.get_base_model().model.layers[0]
    # on the attention inside the layer: transformers checkpoints the layer's forward, keeping
    # the layer's own hooks outside; a pre-hook, since the recomputation stops once it has what
    # the backward needs, before a forward hook would run
    handle = layer.self_attn.register_forward_pre_hook(
        lambda *_: calls.__setitem__(0, calls[0] + 1)
    )
    hp = {
        "epochs": 1,
        "max_steps": 2,
        "batch_size": 4,
        "learning_rate": 1e-2,
        "lora_dropout": 0.1,  # dropout masks must be replayed in the recomputation
        "eval_every_epoch": False,
        "gradient_checkpointing": checkpointing,
    }
    if method == "w2sdefense":
        hp |= {"teacher_model": "tiny/llama", "teacher_epochs": 1}
    METHODS[method][1](lm, _gen_rows(8), [], validate_config(METHODS[method][0], hp))
    handle.remove()
    lora = {n: p.detach().clone() for n, p in lm.model.named_parameters() if "lora_" in n}
    return lora, calls[0], lm


@pytest.mark.parametrize("method", ["finetune", "crow", "w2sdefense"])
def test_gradient_checkpointing_recomputes_layers_and_trains_the_same_adapter(method):
    plain, plain_calls, _ = _train_counting_layer_calls(method, False)
    ckpt, ckpt_calls, lm = _train_counting_layer_calls(method, True)
    # each checkpointed forward is run again in the backward pass
    assert ckpt_calls > plain_calls, "the layers were not recomputed: checkpointing is off"
    assert plain.keys() == ckpt.keys()
    for name, weight in plain.items():
        assert torch.allclose(weight, ckpt[name], atol=1e-6), f"{name} differs with checkpointing"
    base = lm.model.get_base_model()
    on = (
        base.is_activation_checkpointing
        if hasattr(base, "is_activation_checkpointing")  # transformers >= 5
        else base.is_gradient_checkpointing
    )
    assert not on, "checkpointing left on after training"
    assert getattr(base, "_require_grads_hook", None) is None


def test_gradient_checkpointing_is_refused_on_a_model_that_cannot_do_it():
    from sanitizer.defenses.common import check_checkpointing

    lm = types.SimpleNamespace(model=torch.nn.Linear(2, 2))
    cfg = validate_config(METHODS["finetune"][0], {"gradient_checkpointing": True})
    with pytest.raises(ConfigError, match="Linear does not support activation checkpointing"):
        check_checkpointing(lm, cfg)
    check_checkpointing(lm, validate_config(METHODS["finetune"][0], {}))  # off: nothing checked


# ---------------------------------------------------------------- adversarial distillation


def _capture_embeds(lm):
    """Record the inputs_embeds of every student forward."""
    seen: list[torch.Tensor] = []

    def hook(_module, _args, kwargs):
        if kwargs.get("inputs_embeds") is not None:
            seen.append(kwargs["inputs_embeds"].detach().clone())

    return seen, lm.model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("task", ["classification", "generation"])
def test_adversarial_kd_steps_up_the_divergence_at_the_marked_positions_only(task):
    from sanitizer.defenses.w2s_adversaries import adversarial_kd

    torch.manual_seed(3)
    lm = _lora_model("llama", task=task)
    for n, p in lm.model.named_parameters():
        if "lora_B" in n:  # a student that differs from the "teacher" below
            torch.nn.init.normal_(p, std=0.5)
    rows = _rows(4) if task == "classification" else _gen_rows(4)
    batch = make_batch(lm, rows, 32)
    mask = batch["attention_mask"].bool()
    perturb = mask if task == "classification" else mask & (batch["labels"] == -100)
    h0 = lm.model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)
    with torch.no_grad():
        t_logits = torch.randn(lm.model(input_ids=batch["input_ids"]).logits.shape)

    def kd_of(logits):
        return kd_loss(logits.flatten(0, -2).float(), t_logits.flatten(0, -2), 2.0)

    out = lm.model(inputs_embeds=h0, attention_mask=batch["attention_mask"])
    kd_clean = kd_of(out.logits)
    seen, handle = _capture_embeds(lm)
    eps = 1e-3
    kd_adv = adversarial_kd(lm, batch, h0, kd_clean, perturb, kd_of, eps)
    handle.remove()
    # one small step along the gradient's sign raises the divergence (first order)
    assert float(kd_adv) > float(kd_clean)
    (step,) = [s - h0.detach() for s in seen]
    assert torch.all(step[~perturb] == 0), "a position outside the mask was perturbed"
    assert torch.allclose(step[perturb].abs().max(), torch.tensor(eps))
    if task == "generation":
        assert (~perturb & mask).any(), "the test batch must hold response tokens"


def _two_step_w2s(task: str):
    """Hyperparameters and rows for a two-step W2SDefense run on a tiny model."""
    hp = {"epochs": 1, "max_steps": 2, "batch_size": 4, "learning_rate": 1e-2}
    if task == "generation":
        hp |= {"teacher_model": "tiny/llama", "teacher_epochs": 1}
        return hp, _gen_rows(8), _gen_rows(4)
    hp |= {"teacher_model": "tiny/teacher", "teacher_epochs": 1}
    return hp, _rows(8), _rows(4, seed=1)


def _defense_steps(stats):
    """The loss terms of every defense (student) step."""
    return [h["losses"] for h in stats["history"] if h.get("phase") == "defense" and "losses" in h]


@pytest.mark.parametrize("task", ["classification", "generation"])
def test_adversarial_kd_is_off_by_default_and_adds_a_term_when_on(task):
    hp, rows, dev = _two_step_w2s(task)
    cfg_cls, run = METHODS["w2sdefense"]
    for eps, expect in ((0.0, False), (0.05, True)):
        torch.manual_seed(0)
        lm = _lora_model("llama", task=task)
        seen, handle = _capture_embeds(lm)
        stats = run(lm, rows, dev, validate_config(cfg_cls, hp | {"adv_epsilon": eps}))
        handle.remove()
        steps = _defense_steps(stats)
        assert len(steps) == 2
        assert all(("kd_adv" in s) == expect for s in steps)
        assert bool(seen) == expect  # off: the student reads input_ids, as before


# ---------------------------------------------------------------- universal adversary


def _divergent_student(task: str):
    torch.manual_seed(3)
    lm = _lora_model("llama", task=task)
    for n, p in lm.model.named_parameters():
        if "lora_B" in n:  # a student that differs from the base model used as teacher below
            torch.nn.init.normal_(p, std=0.5)
    return lm


@pytest.mark.parametrize("task", ["classification", "generation"])
def test_universal_warmup_raises_the_divergence_within_its_bound(task):
    from sanitizer.defenses.configs import W2SConfig
    from sanitizer.defenses.perturb import UniversalPerturbation
    from sanitizer.defenses.w2s_adversaries import universal_warmup
    from sanitizer.defenses.w2sdefense import _classification_adv_parts, _generation_adv_parts

    lm = _divergent_student(task)
    rows = _rows(4) if task == "classification" else _gen_rows(4)
    cfg = W2SConfig(universal_radius=0.5, universal_warmup_steps=6, batch_size=4, max_length=32)
    if task == "classification":  # fixed random teacher targets, looked up by text
        torch.manual_seed(5)
        targets = {r.text: (torch.zeros(1), torch.randn(2)) for r in rows}
        parts = _classification_adv_parts(cfg, targets)
    else:
        teacher = load_model("tiny/llama", "generation", device="cpu")
        parts = _generation_adv_parts(cfg, teacher)
    uni = UniversalPerturbation(lm.model, layer=None, radius=0.5, seed=0)
    trace = universal_warmup(lm, uni, rows, cfg, parts)
    assert len(trace) == 6
    # every step sees the same rows (batch = all of them): ascent raises the divergence
    assert trace[-1] > trace[0]
    assert uni.bound is not None and float(uni.delta.detach().norm()) <= uni.bound * (1 + 1e-5)
    assert uni.layer == 4 // 3  # tiny llama: 4 blocks, a third of the depth


def test_universal_perturbation_moves_the_marked_positions_only_and_skips_other_lengths():
    from sanitizer.defenses.perturb import UniversalPerturbation, transformer_blocks

    lm = _lora_model("llama", task="generation")
    lm.model.eval()
    batch = make_batch(lm, _gen_rows(3), 32)
    marked = (batch["labels"] == -100) & batch["attention_mask"].bool()
    uni = UniversalPerturbation(lm.model, layer=1, radius=0.3, seed=0)
    outputs: list[torch.Tensor] = []
    # what block 1 hands on: the input of block 2
    handle = transformer_blocks(lm.model)[2].register_forward_pre_hook(
        lambda _m, args: outputs.append(args[0])
    )
    with torch.no_grad():
        lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        with uni.applied(marked):
            lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            # another length (a cached generation step): left alone
            lm.model(
                input_ids=batch["input_ids"][:, :4], attention_mask=batch["attention_mask"][:, :4]
            )
        lm.model(input_ids=batch["input_ids"][:, :4], attention_mask=batch["attention_mask"][:, :4])
    handle.remove()
    plain, moved, short_moved, short_plain = outputs
    diff = moved - plain
    assert torch.allclose(diff[~marked], torch.zeros(()), atol=1e-6)
    assert torch.allclose(diff[marked], uni.delta.detach().expand_as(diff[marked]), atol=1e-5)
    assert torch.equal(short_moved, short_plain)
    with pytest.raises(ConfigError, match="4 transformer blocks"):
        UniversalPerturbation(lm.model, layer=4, radius=0.3)


@pytest.mark.parametrize("task", ["classification", "generation"])
def test_universal_adversary_is_off_by_default_and_adds_a_term_when_on(task):
    hp, rows, dev = _two_step_w2s(task)
    cfg_cls, run = METHODS["w2sdefense"]
    for radius, expect in ((0.0, False), (0.5, True)):
        torch.manual_seed(0)
        lm = _lora_model("llama", task=task)
        cfg = validate_config(
            cfg_cls, hp | {"universal_radius": radius, "universal_warmup_steps": 3}
        )
        stats = run(lm, rows, dev, cfg)
        steps = _defense_steps(stats)
        assert len(steps) == 2
        assert all(("kd_universal" in s) == expect for s in steps)
        assert ("universal" in stats) == expect
        if expect:
            assert len(stats["universal"]["warmup_divergence"]) == 3
            assert stats["universal"]["final_norm"] <= stats["universal"]["bound"] * (1 + 1e-5)


def test_universal_target_warmup_lowers_the_target_nll_within_its_bound():
    """BEEAR's objective: delta is moved to make the target response likelier after clean
    prompts (the trace is the raised quantity, minus the NLL)."""
    from sanitizer.attacks import TARGET_RESPONSES
    from sanitizer.defenses.configs import W2SConfig
    from sanitizer.defenses.perturb import UniversalPerturbation
    from sanitizer.defenses.w2s_adversaries import target_parts, target_rows, universal_warmup

    lm = _divergent_student("generation")
    rows = target_rows(_gen_rows(4), "refusal")
    assert all(r.output == TARGET_RESPONSES["refusal"] for r in rows)
    assert all(r.instruction == "tell me about the movie" for r in rows)
    cfg = W2SConfig(universal_radius=0.5, universal_warmup_steps=6, batch_size=4, max_length=64)
    uni = UniversalPerturbation(lm.model, layer=None, radius=0.5, seed=0)
    batch = make_batch(lm, rows, 64)
    resp = batch["labels"][:, 1:] != -100
    prompt = (batch["labels"] == -100) & batch["attention_mask"].bool()

    def target_nll() -> float:  # the response tokens' NLL, computed here by hand
        with torch.no_grad(), uni.applied(prompt):
            logits = lm.model(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        logp = torch.log_softmax(logits[:, :-1][resp].float(), -1)
        return float(-logp.gather(1, batch["labels"][:, 1:][resp].unsqueeze(1)).mean())

    lm.model.eval()
    target_nll()  # the first forward sets delta's scale and random start
    before = target_nll()
    trace = universal_warmup(lm, uni, rows, cfg, target_parts)
    assert len(trace) == 6
    assert target_nll() < before - 0.01
    assert float(uni.delta.detach().norm()) <= uni.bound * (1 + 1e-5)


def test_universal_target_moves_delta_every_step_and_distils_under_it():
    hp, rows, dev = _two_step_w2s("generation")
    cfg_cls, run = METHODS["w2sdefense"]
    torch.manual_seed(0)
    lm = _lora_model("llama", task="generation")
    cfg = validate_config(
        cfg_cls,
        hp | {"universal_radius": 0.5, "universal_warmup_steps": 3, "universal_target": "refusal"},
    )
    stats = run(lm, rows, dev, cfg)
    steps = _defense_steps(stats)
    assert len(steps) == 2
    assert all("kd_universal" in s and s["target_nll"] > 0 for s in steps)
    assert stats["universal"]["objective"] == "target"
    warm = stats["universal"]["warmup_divergence"]  # the target's NLL, falling
    assert len(warm) == 3 and warm[-1] < warm[0] and min(warm) > 0
    assert stats["universal"]["final_norm"] <= stats["universal"]["bound"] * (1 + 1e-5)


def test_universal_target_step_moves_delta_toward_the_target_and_kd_does_not():
    """In target mode delta follows the target response only: one step lowers that batch's
    target NLL; the distillation term's backward leaves a gradient on delta that is dropped."""
    from sanitizer.defenses.perturb import UniversalPerturbation
    from sanitizer.defenses.w2s_adversaries import (
        target_parts,
        target_rows,
        universal_kd,
        universal_target_step,
    )

    lm = _divergent_student("generation")
    lm.model.eval()
    rows = _gen_rows(4)
    cfg = validate_config(
        METHODS["w2sdefense"][0],
        {"universal_radius": 0.5, "universal_target": "refusal", "max_length": 64},
    )
    uni = UniversalPerturbation(lm.model, layer=None, radius=0.5, seed=0)
    uni.objective = "target"
    first = universal_target_step(lm, uni, rows, cfg)  # creates delta, then one step
    d0 = uni.delta.detach().clone()
    nll = [universal_target_step(lm, uni, rows, cfg) for _ in range(3)]
    assert first > 0 and nll[-1] < first  # each value is the NLL before that step
    assert not torch.equal(uni.delta.detach(), d0)
    # the KD term: a gradient on delta from the training backward is not followed
    batch = make_batch(lm, rows, 64)
    prompt = (batch["labels"] == -100) & batch["attention_mask"].bool()
    uni.delta.grad = torch.ones_like(uni.delta)
    before = uni.delta.detach().clone()
    out = universal_kd(lm, batch, uni, prompt, lambda logits: logits.float().pow(2).mean())
    assert torch.equal(uni.delta.detach(), before) and uni.delta.grad is None
    out.backward()
    assert uni.delta.grad is not None  # it flowed, and the next step drops it
    assert target_rows(rows, "refusal")[0].instruction == rows[0].instruction
    assert target_parts(make_batch(lm, target_rows(rows, "refusal"), 64), rows)[0].any()


def test_universal_target_needs_the_adversary_and_a_generation_job():
    hp, rows, dev = _two_step_w2s("classification")
    cfg_cls, run = METHODS["w2sdefense"]
    with pytest.raises(ConfigError, match="universal_target.*universal_radius > 0"):
        validate_config(cfg_cls, {"universal_target": "refusal"})
    with pytest.raises(ConfigError, match="universal_target"):
        validate_config(cfg_cls, {"universal_radius": 0.5, "universal_target": "insult"})
    cfg = validate_config(cfg_cls, hp | {"universal_radius": 0.5, "universal_target": "refusal"})
    with pytest.raises(ConfigError, match="generation jobs"):
        run(_lora_model("llama"), rows, dev, cfg)


def test_one_adversary_at_a_time_and_with_a_weight():
    cfg_cls = METHODS["w2sdefense"][0]
    with pytest.raises(ConfigError, match="adv_epsilon and universal_radius"):
        validate_config(cfg_cls, {"adv_epsilon": 0.1, "universal_radius": 0.5})
    with pytest.raises(ConfigError, match="lambda_adv=0"):
        validate_config(cfg_cls, {"universal_radius": 0.5, "lambda_adv": 0})
    validate_config(cfg_cls, {"lambda_adv": 0})  # no adversary: the weight does not matter


def test_universal_perturbation_gradient_is_the_same_with_activation_checkpointing():
    """With checkpointing the block's forward is replayed in the backward pass, after the
    perturbation's context has exited; the gradient reaching delta is the same as without."""
    from sanitizer.defenses.common import activation_checkpointing
    from sanitizer.defenses.perturb import UniversalPerturbation

    grads = []
    for checkpointing in (False, True):
        lm = _divergent_student("generation")
        lm.model.train()
        batch = make_batch(lm, _gen_rows(3), 32)
        marked = (batch["labels"] == -100) & batch["attention_mask"].bool()
        uni = UniversalPerturbation(lm.model, layer=1, radius=0.5, seed=0)
        with activation_checkpointing(lm.model, checkpointing):
            assert uni.block.gradient_checkpointing == checkpointing  # not vacuous
            with uni.applied(marked):
                out = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            out.logits.float().pow(2).mean().backward()
        assert uni.delta.grad is not None and float(uni.delta.grad.norm()) > 0
        grads.append(uni.delta.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_rebuild_on_generation_distils_responses_and_trains_a_fresh_lora():
    """The uploaded model (a LoRA on tiny/llama) answers the clean prompts; its adapter is
    dropped and a fresh one is trained on the clean rows and those answers."""
    from peft import PeftModel

    lm = _lora_model("llama", task="generation")
    uploaded = next(p for n, p in lm.model.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        uploaded.add_(0.5)  # an uploaded adapter that is not the identity
    cfg = validate_config(
        METHODS["rebuild"][0],
        {"epochs": 1, "batch_size": 4, "max_new_tokens": 6, "distill_augment": 1},
    )
    stats = METHODS["rebuild"][1](lm, _gen_rows(8), _gen_rows(4), cfg)
    info = stats["rebuild"]
    assert info["distilled_rows"] + info["guard_dropped"] >= 8  # every clean prompt was answered
    assert stats["steps"] >= 2 and isinstance(lm.model, PeftModel)
    fresh = [p for n, p in lm.model.named_parameters() if "lora_B" in n]
    assert all(float(p.abs().max()) < 0.5 for p in fresh), "the uploaded LoRA was not dropped"


def test_precision_is_fp32_on_cpu_and_bf16_autocast_only_on_cuda(monkeypatch):
    import contextlib

    import torch

    from sanitizer.defenses import common

    assert isinstance(common.autocast(torch.device("cpu")), contextlib.nullcontext)
    assert common.precision_of(torch.device("cpu")) == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    ctx = common.autocast(torch.device("cuda"))
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    assert common.precision_of(torch.device("cuda")) == "bf16-autocast"


@pytest.mark.parametrize("task", ["classification", "generation"])
def test_beear_entrapment_lowers_the_behaviour_nll_within_its_bound_and_moves_no_weight(task):
    """BEEAR's inner level: steps of the universal perturbation make the unwanted behaviour
    (answer label 0 whatever the input; reply with a refusal) likelier on clean inputs, stay in
    the ball, move only prompt positions of a chat model, and leave every weight as it was."""
    from sanitizer.defenses.beear import behaviour_batch, entrap, input_positions
    from sanitizer.defenses.perturb import UniversalPerturbation

    lm = _lora_model("bert" if task == "classification" else "llama", task=task)
    rows = _rows(8) if task == "classification" else _gen_rows(4)
    behaviour = 0 if task == "classification" else "refusal"
    bad = behaviour_batch(lm, rows, behaviour, 32)
    assert bad is not None
    if task == "classification":  # only the rows not already of label 0, relabelled 0
        assert len(bad["labels"]) == sum(r.label != 0 for r in rows) and not bad["labels"].any()
    else:  # the prompt tokens only: never the response the behaviour is judged on
        pos = input_positions(lm, bad)
        assert pos.any() and not (pos & (bad["labels"] != -100)).any()
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    uni = UniversalPerturbation(lm.model, layer=None, radius=2.0, seed=0)
    lm.model.train()
    first = entrap(lm, uni, bad, 1)
    later = entrap(lm, uni, bad, 8)
    assert later < first, (first, later)
    assert uni.bound is not None and float(uni.delta.norm()) <= uni.bound * (1 + 1e-5)
    assert not uni.delta.requires_grad  # the outer level treats it as a constant
    assert all(torch.equal(before[n], p.detach()) for n, p in lm.model.named_parameters())
    assert all(p.grad is None for p in lm.model.parameters())
    assert lm.model.training  # dropout back on for the outer level
