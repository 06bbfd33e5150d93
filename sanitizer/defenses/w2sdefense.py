"""W2SDefense: weak-to-strong feature-alignment distillation.

Zhao et al., "Unlearning Backdoor Attacks for LLMs with Weak-to-Strong Knowledge
Distillation" (ACL Findings 2025); docs/METHODS_NOTES.md (W2SDefense).

1. Teacher: a small model trained with *all* parameters on the clean set, so it is clean by
   construction. Classification: encoder + projection to the student width,
   ``z_T = ReLU(W_p h_CLS + b_p)``, logits ``t = W_c z_T + b_c``.
2. Student: the (possibly poisoned) large model with a LoRA adapter, trained on the same
   clean set with
       L = l_ce CE(s, y) + l_kd tau^2 KL(softmax(t/tau) || softmax(s/tau)) + l_fa L_fa
   where ``L_fa`` compares the teacher feature with the student's pooled final hidden state
   (Ours, per sample; docs/METHODS_NOTES.md (W2SDefense)).

The teacher is frozen once trained, so its features and logits for the training set are
computed once and cached (the student step costs one student forward/backward).

Generation (no published recipe; our design, measured in docs/BENCHMARKS.md): the teacher
is a causal LM sharing the student's tokenizer (default: the clean base model without the
uploaded adapter; a smaller same-family model when there is one), fully fine-tuned on the
clean set. The student matches the teacher's next-token distribution on response tokens
(KL at temperature tau) plus the response-token CE; ``L_fa`` aligns the mean of the final
hidden states over response tokens through a learned projection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sanitizer.defenses.common import (
    Batch,
    CancelFn,
    ProgressFn,
    TrainConfig,
    UniversalPerturbation,
    embedding_leaf,
    fgsm_embeds,
    iterate_batches,
    make_batch,
    pooled_feature,
    task_loss,
    train,
)
from sanitizer.defenses.configs import W2SConfig
from sanitizer.errors import ConfigError
from sanitizer.models import LoadedModel, load_model, load_tokenizer


class ClassificationTeacher(nn.Module):
    """Encoder + ``z = ReLU(W_p h_CLS + b_p)`` (student width) + linear classifier."""

    def __init__(self, encoder: nn.Module, teacher_width: int, student_width: int, num_labels: int):
        super().__init__()
        self.encoder = encoder
        self.proj = nn.Linear(teacher_width, student_width)
        self.head = nn.Linear(student_width, num_labels)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        z = F.relu(self.proj(h))
        return z, self.head(z)


def _normalize(x: torch.Tensor, how: str) -> torch.Tensor:
    if how == "l2":
        return F.normalize(x, dim=-1)
    if how == "layernorm":
        return F.layer_norm(x, x.shape[-1:])
    return x


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(softmax(t/tau) || softmax(s/tau)), batch mean."""
    log_p_s = F.log_softmax(student_logits / tau, dim=-1)
    p_t = F.softmax(teacher_logits / tau, dim=-1)
    return tau * tau * F.kl_div(log_p_s, p_t, reduction="batchmean")


def _input_embeds(lm: LoadedModel, batch: Batch, cfg: W2SConfig) -> torch.Tensor | None:
    """The student's input embeddings, as a leaf that takes a gradient, when the adversarial
    term is on (``adv_epsilon > 0``); None otherwise (the student reads ``input_ids``)."""
    return None if cfg.adv_epsilon == 0 else embedding_leaf(lm, batch)


def _student_forward(lm: LoadedModel, batch: Batch, h0: torch.Tensor | None) -> Any:
    inputs = {"input_ids": batch["input_ids"]} if h0 is None else {"inputs_embeds": h0}
    return lm.model(**inputs, attention_mask=batch["attention_mask"], output_hidden_states=True)


def adversarial_kd(
    lm: LoadedModel,
    batch: Batch,
    h0: torch.Tensor,
    kd_clean: torch.Tensor,
    perturb: torch.Tensor,
    kd_of_logits: Any,
    epsilon: float,
) -> torch.Tensor:
    """Ours: the distillation term on the worst nearby input. One FGSM step on the student's
    input embeddings, at the positions ``perturb`` marks, in the direction that most raises the
    student's divergence from the clean teacher (``kd_clean``'s gradient; parameter gradients of
    that backward are not kept); the teacher's targets stay those of the clean input.

    A trigger is an input edit that makes the poisoned student leave the teacher's behaviour;
    the clean rows never contain it, so plain distillation never sees that divergence. The
    perturbation looks for inputs near the clean ones where the student already diverges, and
    the term pulls it back to the teacher there. CROW perturbs the same way but for its
    layer-consistency loss."""
    h_adv = fgsm_embeds(kd_clean, h0, epsilon, perturb)
    out_adv = lm.model(inputs_embeds=h_adv, attention_mask=batch["attention_mask"])
    return kd_of_logits(out_adv.logits)


def universal_kd(
    lm: LoadedModel,
    batch: Batch,
    uni: UniversalPerturbation,
    positions: torch.Tensor,
    kd_of_logits: Any,
) -> torch.Tensor:
    """Ours: the distillation term with the universal perturbation ``uni`` in the residual
    stream at ``positions``. With the divergence objective ``delta`` first takes one step up the
    gradient the previous step's backward left on it (free adversarial training: the ascent
    costs no extra pass), so it keeps following the direction in which the student, as it is
    now, leaves the clean teacher most; with the target objective it was already moved by
    ``universal_target_step`` and that gradient is dropped.

    Per-input FGSM (``adversarial_kd``) moves every token a little in its own direction; a
    trigger is one edit that works on every input, and so is ``delta``."""
    if uni.delta is not None:
        if uni.objective == "divergence":
            uni.ascend(uni.delta.grad)
        uni.delta.grad = None
    with uni.applied(positions):
        out = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return kd_of_logits(out.logits)


def target_rows(rows: Sequence[Any], target: str) -> list[Any]:
    """The clean prompts with the feared response in place of the clean one."""
    from sanitizer.attacks import target_response
    from sanitizer.data import GenerationRow

    return [GenerationRow(r.instruction, r.input, target_response(target, r.output)) for r in rows]


def target_parts(batch: Batch, rows: Sequence[Any]):
    """For ``universal_warmup`` / ``universal_target_step`` (which *raise* what this returns):
    the prompt tokens may be moved, and the quantity is minus the mean NLL of the rows'
    responses, which ``target_rows`` made the target response."""
    resp = batch["labels"][:, 1:] != -100
    labels = batch["labels"][:, 1:][resp]
    prompt = (batch["labels"] == -100) & batch["attention_mask"].bool()
    return prompt, lambda logits: -F.cross_entropy(logits[:, :-1][resp].float(), labels)


def universal_target_step(
    lm: LoadedModel, uni: UniversalPerturbation, rows: Sequence[Any], cfg: W2SConfig
) -> float:
    """One step of ``delta`` towards the target response after this batch's clean prompts,
    against the student as it is now (its weights get no gradient from it); returns the
    target's NLL before the step."""
    assert cfg.universal_target is not None
    batch = make_batch(lm, target_rows(rows, cfg.universal_target), cfg.max_length)
    positions, objective = target_parts(batch, rows)
    with uni.applied(positions):
        out = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    value = objective(out.logits)
    assert uni.delta is not None
    (grad,) = torch.autograd.grad(value, uni.delta)
    uni.ascend(grad)
    return -float(value.detach())


def universal_warmup(
    lm: LoadedModel,
    uni: UniversalPerturbation,
    train_rows: Sequence[Any],
    cfg: W2SConfig,
    adv_parts: Any,
) -> list[float]:
    """``cfg.universal_warmup_steps`` ascent steps on ``delta`` alone over the clean training
    batches (no weight update, dropout off), before the student trains against it; returns
    the divergence at each step. ``adv_parts(batch, rows)`` gives the positions to perturb
    and the divergence as a function of the student's logits."""
    was_training = lm.model.training
    lm.model.eval()
    trace: list[float] = []
    epoch = 0
    while len(trace) < cfg.universal_warmup_steps:
        for rows in iterate_batches(train_rows, cfg.batch_size, cfg.seed + 1, epoch):
            batch = make_batch(lm, rows, cfg.max_length)
            positions, kd_of_logits = adv_parts(batch, rows)
            with uni.applied(positions):
                out = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            kd = kd_of_logits(out.logits)
            assert uni.delta is not None  # created by the hook on the first forward
            (grad,) = torch.autograd.grad(kd, uni.delta)
            uni.ascend(grad)
            trace.append(float(kd.detach()))
            if len(trace) >= cfg.universal_warmup_steps:
                break
        epoch += 1
    if was_training:
        lm.model.train()
    return trace


def _add_adversarial_terms(
    lm: LoadedModel,
    batch: Batch,
    rows: Sequence[Any],
    cfg: W2SConfig,
    loss: torch.Tensor,
    terms: dict[str, float],
    kd: torch.Tensor,
    h0: torch.Tensor | None,
    uni: UniversalPerturbation | None,
    positions: torch.Tensor,
    kd_of_logits: Any,
) -> torch.Tensor:
    """``loss`` plus the adversarial distillation term that is on: the FGSM step from ``h0``
    (``adv_epsilon``) or the universal perturbation ``uni`` (with ``universal_target``, first
    moved one step towards the target response after this batch's prompts); its value goes
    into ``terms``."""
    if h0 is not None:
        kd_adv = adversarial_kd(lm, batch, h0, kd, positions, kd_of_logits, cfg.adv_epsilon)
        terms["kd_adv"] = float(kd_adv.detach())
        loss = loss + cfg.lambda_adv * kd_adv
    if uni is not None:
        if uni.objective == "target":
            terms["target_nll"] = universal_target_step(lm, uni, rows, cfg)
        kd_uni = universal_kd(lm, batch, uni, positions, kd_of_logits)
        terms["kd_universal"] = float(kd_uni.detach())
        loss = loss + cfg.lambda_adv * kd_uni
    return loss


def _train_teacher(
    holder: LoadedModel,
    train_rows: Sequence[Any],
    dev_rows: Sequence[Any],
    cfg: W2SConfig,
    batch_size: int,
    progress: ProgressFn | None,
    should_cancel: CancelFn | None,
    checkpointing: bool = False,
) -> dict[str, Any]:
    """Full fine-tuning of the teacher on the clean set (task loss), best clean-dev epoch kept.
    ``checkpointing``: activation checkpointing (the generation teacher, a full causal LM)."""
    if cfg.teacher_epochs == 0:
        return {}
    tcfg = TrainConfig(
        epochs=cfg.teacher_epochs,
        batch_size=batch_size,
        learning_rate=cfg.teacher_learning_rate,
        warmup_ratio=0.06,
        schedule="linear",
        max_length=cfg.max_length,
        seed=cfg.seed,
        cancel_check_every=cfg.cancel_check_every,
        select_tolerance=0.0,  # the teacher is simply the most accurate epoch
        gradient_checkpointing=checkpointing,
    )

    def teacher_step(
        lm: LoadedModel, batch: Batch, rows: Sequence[Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        out = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = task_loss(lm, out, batch)
        return loss, {"teacher_ce": float(loss.detach())}

    return train(
        holder,
        train_rows,
        dev_rows,
        tcfg,
        teacher_step,
        phase="teacher",
        progress=progress,
        should_cancel=should_cancel,
    )


# ---------------------------------------------------------------- classification


def train_classification_teacher(
    student: LoadedModel,
    train_rows: Sequence[Any],
    dev_rows: Sequence[Any],
    cfg: W2SConfig,
    progress: ProgressFn | None,
    should_cancel: CancelFn | None,
) -> tuple[LoadedModel, ClassificationTeacher, dict[str, Any]]:
    from transformers import AutoModel

    from sanitizer.hub import resolve_model

    model_dir = resolve_model(cfg.teacher_model)
    encoder = AutoModel.from_pretrained(model_dir, trust_remote_code=False, use_safetensors=True)
    if getattr(encoder.config, "is_decoder", False) or "CausalLM" in " ".join(
        encoder.config.architectures or []
    ):
        raise ConfigError(
            f"teacher '{cfg.teacher_model}' is a decoder; classification teachers are encoders",
            hint="use e.g. sentence-transformers/all-MiniLM-L6-v2",
        )
    teacher = ClassificationTeacher(
        encoder, encoder.config.hidden_size, student.hidden_size, int(student.num_labels or 2)
    ).to(student.device)
    holder = LoadedModel(
        model=_TeacherAsClassifier(teacher),
        tokenizer=load_tokenizer(model_dir, is_decoder=False),
        task="classification",
        model_id=cfg.teacher_model,
        model_dir=model_dir,
        is_decoder=False,
        template=student.template,
        device=student.device,
        num_labels=student.num_labels,
    )
    stats: dict[str, Any] = {
        "teacher_model": cfg.teacher_model,
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
    }
    stats.update(
        _train_teacher(
            holder, train_rows, dev_rows, cfg, cfg.teacher_batch_size, progress, should_cancel
        )
    )
    teacher.eval().requires_grad_(False)
    return holder, teacher, stats


class _TeacherAsClassifier(nn.Module):
    """Adapter so the generic loop and dev scoring can call the teacher like an HF model."""

    def __init__(self, teacher: ClassificationTeacher):
        super().__init__()
        self.teacher = teacher

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any):
        _, logits = self.teacher(input_ids, attention_mask)
        return type("Out", (), {"logits": logits})()


@torch.no_grad()
def _teacher_targets(
    holder: LoadedModel, teacher: ClassificationTeacher, rows: Sequence[Any], max_length: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for i in range(0, len(rows), 64):
        chunk = rows[i : i + 64]
        batch = make_batch(holder, chunk, max_length)
        z, logits = teacher(batch["input_ids"], batch["attention_mask"])
        for row, zi, li in zip(chunk, z, logits, strict=True):
            cache[row.text] = (zi, li)
    return cache


def _classification_adv_parts(
    cfg: W2SConfig, targets: dict[str, tuple[torch.Tensor, torch.Tensor]]
):
    """Every real token may be perturbed; the divergence is the KD term on the labels."""

    def parts(batch: Batch, rows: Sequence[Any]):
        t_logits = torch.stack([targets[r.text][1] for r in rows])
        return batch["attention_mask"], lambda logits: kd_loss(logits, t_logits, cfg.temperature)

    return parts


def _classification_step(
    cfg: W2SConfig,
    targets: dict[str, tuple[torch.Tensor, torch.Tensor]],
    uni: UniversalPerturbation | None = None,
):
    parts = _classification_adv_parts(cfg, targets)

    def step_loss(
        lm: LoadedModel, batch: Batch, rows: Sequence[Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        h0 = _input_embeds(lm, batch, cfg)
        out = _student_forward(lm, batch, h0)
        z_t = torch.stack([targets[r.text][0] for r in rows])
        t_logits = torch.stack([targets[r.text][1] for r in rows])
        ce = task_loss(lm, out, batch)
        kd = kd_loss(out.logits, t_logits, cfg.temperature)
        hidden = out.hidden_states[-1]
        if cfg.fa_mode == "pooled":
            h_s = pooled_feature(lm, hidden, batch["attention_mask"])
            fa = (
                (_normalize(z_t, cfg.fa_normalize) - _normalize(h_s, cfg.fa_normalize))
                .pow(2)
                .sum(-1)
                .mean()
            )
        else:  # every real token of the student against its own sample's teacher vector
            diff = _normalize(hidden, cfg.fa_normalize) - _normalize(
                z_t, cfg.fa_normalize
            ).unsqueeze(1)
            mask = batch["attention_mask"].unsqueeze(-1).to(diff.dtype)
            fa = (diff.pow(2) * mask).sum() / mask.sum()
        loss = cfg.lambda_ce * ce + cfg.lambda_kd * kd + cfg.lambda_fa * fa
        terms = {"ce": float(ce.detach()), "kd": float(kd.detach()), "fa": float(fa.detach())}
        if h0 is not None or uni is not None:  # every real token may be perturbed
            loss = _add_adversarial_terms(
                lm, batch, rows, cfg, loss, terms, kd, h0, uni, *parts(batch, rows)
            )
        return loss, terms

    return step_loss


# ---------------------------------------------------------------- generation


def _generation_teacher(
    student: LoadedModel, cfg: W2SConfig, train_rows, dev_rows, progress, should_cancel
):
    holder = load_model(cfg.teacher_model, "generation", device=student.device)
    if holder.tokenizer.get_vocab() != student.tokenizer.get_vocab():
        raise ConfigError(
            f"teacher '{cfg.teacher_model}' does not share the student's tokenizer",
            hint="for generation the teacher must be a causal LM of the same family (same vocabulary)",
        )
    holder.template = student.template
    stats: dict[str, Any] = {"teacher_model": cfg.teacher_model}
    stats.update(
        _train_teacher(
            holder,
            train_rows,
            dev_rows,
            cfg,
            cfg.batch_size,
            progress,
            should_cancel,
            checkpointing=cfg.gradient_checkpointing,
        )
    )
    holder.model.eval().requires_grad_(False)
    return holder, stats


def _generation_adv_parts(cfg: W2SConfig, teacher: LoadedModel):
    """The prompt tokens may be perturbed (the response is the teacher-forced target); the
    divergence is the KD term on the response tokens, against the teacher on the clean input."""

    def parts(batch: Batch, rows: Sequence[Any], t_logits: torch.Tensor | None = None):
        resp = batch["labels"][:, 1:] != -100
        if t_logits is None:
            with torch.no_grad():
                t_all = teacher.model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits
            t_logits = t_all[:, :-1][resp].float()
        prompt = (batch["labels"] == -100) & batch["attention_mask"].bool()
        return prompt, lambda logits: kd_loss(
            logits[:, :-1][resp].float(), t_logits, cfg.temperature
        )

    return parts


def _generation_step(
    cfg: W2SConfig,
    teacher: LoadedModel,
    proj: nn.Linear,
    uni: UniversalPerturbation | None = None,
):
    parts = _generation_adv_parts(cfg, teacher)

    def step_loss(lm: LoadedModel, batch: Batch, rows: Sequence[Any]):
        h0 = _input_embeds(lm, batch, cfg)
        out = _student_forward(lm, batch, h0)
        with torch.no_grad():
            t_out = teacher.model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                output_hidden_states=True,
            )
        resp = batch["labels"][:, 1:] != -100  # positions whose next token is a response token
        s_logits = out.logits[:, :-1][resp].float()
        t_logits = t_out.logits[:, :-1][resp].float()
        ce = task_loss(lm, out, batch)
        kd = kd_loss(s_logits, t_logits, cfg.temperature)
        m = resp.unsqueeze(-1).float()
        h_s = (out.hidden_states[-1][:, :-1] * m).sum(1) / m.sum(1).clamp_min(1)
        h_t = (t_out.hidden_states[-1][:, :-1] * m).sum(1) / m.sum(1).clamp_min(1)
        z_t = F.relu(proj(h_t))
        fa = (
            (_normalize(z_t, cfg.fa_normalize) - _normalize(h_s, cfg.fa_normalize))
            .pow(2)
            .sum(-1)
            .mean()
        )
        loss = cfg.lambda_ce * ce + cfg.lambda_kd * kd + cfg.lambda_fa * fa
        terms = {"ce": float(ce.detach()), "kd": float(kd.detach()), "fa": float(fa.detach())}
        if h0 is not None or uni is not None:  # the prompt only: the response is the target
            loss = _add_adversarial_terms(
                lm, batch, rows, cfg, loss, terms, kd, h0, uni, *parts(batch, rows, t_logits)
            )
        return loss, terms

    return step_loss


# ---------------------------------------------------------------- entry point


def _universal(
    lm: LoadedModel, train_rows: Sequence[Any], cfg: W2SConfig, adv_parts: Any
) -> UniversalPerturbation | None:
    """The universal perturbation, warmed up against the student as it starts, when
    ``universal_radius > 0``."""
    if cfg.universal_radius == 0:
        return None
    uni = UniversalPerturbation(
        lm.model, layer=cfg.universal_layer, radius=cfg.universal_radius, seed=cfg.seed
    )
    if cfg.universal_target is None:
        uni.warmup_divergence = universal_warmup(lm, uni, train_rows, cfg, adv_parts)
        return uni
    uni.objective = "target"
    rows = target_rows(train_rows, cfg.universal_target)
    # the trace holds the raised quantity, minus the target's NLL: report the NLL itself
    uni.warmup_divergence = [-v for v in universal_warmup(lm, uni, rows, cfg, target_parts)]
    return uni


def run(
    lm: LoadedModel,
    train_rows: Sequence[Any],
    dev_rows: Sequence[Any],
    cfg: W2SConfig,
    *,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Train a clean teacher, then the LoRA attached to ``lm`` against it."""
    cfg.check_task(lm.task)  # before the teacher: a setting that cannot apply fails at once
    if lm.task == "classification":
        holder, teacher, tstats = train_classification_teacher(
            lm, train_rows, dev_rows, cfg, progress, should_cancel
        )
        targets = _teacher_targets(holder, teacher, train_rows, cfg.max_length)
        uni = _universal(lm, train_rows, cfg, _classification_adv_parts(cfg, targets))
        # The student tokenizes the same texts itself; teacher targets are looked up by text.
        stats = train(
            lm,
            train_rows,
            dev_rows,
            cfg,
            _classification_step(cfg, targets, uni),
            progress=progress,
            should_cancel=should_cancel,
        )
    else:
        holder, tstats = _generation_teacher(lm, cfg, train_rows, dev_rows, progress, should_cancel)
        # A fixed random projection (teacher width -> student width) keeps the FA target
        # stable; it is not trained: the teacher's generation head never saw it.
        g = torch.Generator().manual_seed(cfg.seed)
        proj = nn.Linear(holder.hidden_size, lm.hidden_size).to(lm.device)
        with torch.no_grad():
            proj.weight.copy_(torch.randn(proj.weight.shape, generator=g) / holder.hidden_size**0.5)
            proj.bias.zero_()
        proj.requires_grad_(False)
        uni = _universal(lm, train_rows, cfg, _generation_adv_parts(cfg, holder))
        stats = train(
            lm,
            train_rows,
            dev_rows,
            cfg,
            _generation_step(cfg, holder, proj, uni),
            progress=progress,
            should_cancel=should_cancel,
        )
    if uni is not None:
        stats["universal"] = {
            # divergence: the KD divergence it climbed; target: the target response's NLL
            "objective": uni.objective,
            "target": cfg.universal_target,
            "layer": uni.layer,
            "bound": uni.bound,
            "warmup_divergence": uni.warmup_divergence,
            "final_norm": None if uni.delta is None else float(uni.delta.detach().norm()),
        }
    stats["teacher"] = {k: v for k, v in tstats.items() if k != "history"}
    stats["history"] = tstats.get("history", []) + stats["history"]
    return stats
