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

from sanitizer.defenses.batching import Batch, prompt_positions
from sanitizer.defenses.common import (
    CancelFn,
    ProgressFn,
    pooled_feature,
    task_loss,
    train,
)
from sanitizer.defenses.configs import W2SConfig
from sanitizer.defenses.perturb import UniversalPerturbation
from sanitizer.defenses.w2s_adversaries import (
    add_adversarial_terms,
    input_embeds,
    make_universal,
    student_forward,
)
from sanitizer.defenses.w2s_teacher import (
    teacher_targets,
    train_classification_teacher,
    train_generation_teacher,
)
from sanitizer.models import LoadedModel


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


# ---------------------------------------------------------------- classification


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
        h0 = input_embeds(lm, batch, cfg)
        out = student_forward(lm, batch, h0)
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
            loss = add_adversarial_terms(
                lm, batch, rows, cfg, loss, terms, kd, h0, uni, *parts(batch, rows)
            )
        return loss, terms

    return step_loss


# ---------------------------------------------------------------- generation


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
        return prompt_positions(batch), lambda logits: kd_loss(
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
        h0 = input_embeds(lm, batch, cfg)
        out = student_forward(lm, batch, h0)
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
            loss = add_adversarial_terms(
                lm, batch, rows, cfg, loss, terms, kd, h0, uni, *parts(batch, rows, t_logits)
            )
        return loss, terms

    return step_loss


# ---------------------------------------------------------------- entry point


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
        targets = teacher_targets(holder, teacher, train_rows, cfg.max_length)
        uni = make_universal(lm, train_rows, cfg, _classification_adv_parts(cfg, targets))
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
        holder, tstats = train_generation_teacher(
            lm, cfg, train_rows, dev_rows, progress, should_cancel
        )
        # A fixed random projection (teacher width -> student width) keeps the FA target
        # stable; it is not trained: the teacher's generation head never saw it.
        g = torch.Generator().manual_seed(cfg.seed)
        proj = nn.Linear(holder.hidden_size, lm.hidden_size).to(lm.device)
        with torch.no_grad():
            proj.weight.copy_(torch.randn(proj.weight.shape, generator=g) / holder.hidden_size**0.5)
            proj.bias.zero_()
        proj.requires_grad_(False)
        uni = make_universal(lm, train_rows, cfg, _generation_adv_parts(cfg, holder))
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
