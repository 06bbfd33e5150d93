"""W2SDefense's two adversaries, both on the distillation term: one FGSM step on the student's input embeddings (adv_epsilon), and a universal perturbation of one block's output, warmed up to make the student diverge from the teacher, or (universal_target) to make it give a target response."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from sanitizer.defenses.batching import Batch, iterate_batches, make_batch, prompt_positions
from sanitizer.defenses.configs import W2SConfig
from sanitizer.defenses.perturb import UniversalPerturbation, embedding_leaf, fgsm_embeds
from sanitizer.models import LoadedModel


def input_embeds(lm: LoadedModel, batch: Batch, cfg: W2SConfig) -> torch.Tensor | None:
    """The student's input embeddings, as a leaf that takes a gradient, when the adversarial
    term is on (``adv_epsilon > 0``); None otherwise (the student reads ``input_ids``)."""
    return None if cfg.adv_epsilon == 0 else embedding_leaf(lm, batch)


def student_forward(lm: LoadedModel, batch: Batch, h0: torch.Tensor | None) -> Any:
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
    from sanitizer.data_rows import GenerationRow

    return [GenerationRow(r.instruction, r.input, target_response(target, r.output)) for r in rows]


def target_parts(batch: Batch, rows: Sequence[Any]):
    """For ``universal_warmup`` / ``universal_target_step`` (which *raise* what this returns):
    the prompt tokens may be moved, and the quantity is minus the mean NLL of the rows'
    responses, which ``target_rows`` made the target response."""
    resp = batch["labels"][:, 1:] != -100
    labels = batch["labels"][:, 1:][resp]
    return prompt_positions(
        batch
    ), lambda logits: -F.cross_entropy(logits[:, :-1][resp].float(), labels)


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


def add_adversarial_terms(
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


def make_universal(
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
