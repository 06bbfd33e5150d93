"""A comparator after BEEAR (Zeng et al., "BEEAR: Embedding-based Adversarial Removal of Safety
Backdoors in Instruction-tuned Language Models", EMNLP 2024). No teacher, no trigger knowledge.

A trigger is one edit that moves every input's hidden state the same way; BEEAR looks for such a
move directly: a universal perturbation ``delta`` added to a middle block's output at the input
positions, found by ascent to make the model show an unwanted behaviour on clean inputs, and then
trains the model to answer those inputs correctly with ``delta`` in place. Bi-level, per step:

    inner (``inner_steps`` times, weights fixed, dropout off):
        delta <- Proj_ball(delta - step * grad_delta NLL(behaviour | x, delta))
    outer (the LoRA):
        L = L_task(x) + alpha * L_task(x | delta)

One ``delta`` per kind of behaviour, taken in turn step by step, each kept (warm) across
steps: a classifier's labels ("answer label k whatever the input", on the rows not of label k),
a chat model's ``behaviours`` (the clean prompts answered with a refusal, an insult, an injected
link: sanitizer.attacks.TARGET_RESPONSES). The paper perturbs block 9 of Llama-2-7B's 32 and
names the unwanted behaviour set (harmful answers); here it is the behaviour kinds the benchmark
plants, beyond one kind, and the block is a third of the depth by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sanitizer.defenses.batching import (
    Batch,
    classification_batch,
    make_batch,
    prompt_positions,
)
from sanitizer.defenses.common import CancelFn, ProgressFn, task_loss, train
from sanitizer.defenses.configs import BeearConfig
from sanitizer.defenses.perturb import UniversalPerturbation
from sanitizer.defenses.w2s_adversaries import target_rows
from sanitizer.models import LoadedModel


def input_positions(lm: LoadedModel, batch: Batch) -> torch.Tensor:
    """Where ``delta`` goes: every real token of a classifier's input; a chat model's prompt
    tokens (the response is what the behaviour is judged on)."""
    if lm.task == "classification":
        return batch["attention_mask"].bool()
    return prompt_positions(batch)


def behaviour_batch(
    lm: LoadedModel, rows: Sequence[Any], behaviour: int | str, max_length: int
) -> Batch | None:
    """This batch's clean inputs with the unwanted answer as their target: the rows not of
    label ``behaviour`` labelled with it, or the prompts with the ``behaviour`` response;
    None when no row can show it."""
    if isinstance(behaviour, int):
        texts = [r.text for r in rows if r.label != behaviour]
        return (
            classification_batch(lm, texts, [behaviour] * len(texts), max_length) if texts else None
        )
    return make_batch(lm, target_rows(rows, behaviour), max_length)


def entrap(lm: LoadedModel, uni: UniversalPerturbation, bad: Batch, steps: int) -> float:
    """The inner level: ``steps`` steps of ``delta`` that lower the behaviour's NLL on ``bad``,
    the weights fixed and dropout off; returns the NLL before the last step."""
    was_training = lm.model.training
    lm.model.eval()
    positions = input_positions(lm, bad)
    nll = float("nan")
    try:
        for _ in range(steps):
            if uni.delta is not None:
                uni.delta.requires_grad_(True)
            with uni.applied(positions):
                out = lm.model(input_ids=bad["input_ids"], attention_mask=bad["attention_mask"])
            loss = task_loss(lm, out, bad)
            assert uni.delta is not None  # made by the first forward through the block
            (grad,) = torch.autograd.grad(-loss, uni.delta)
            uni.ascend(grad)
            nll = float(loss.detach())
    finally:
        if uni.delta is not None:
            uni.delta.requires_grad_(False)
        lm.model.train(was_training)
    return nll


def make_step_loss(lm: LoadedModel, cfg: BeearConfig):
    behaviours: list[int | str] = (
        list(range(lm.num_labels or int(getattr(lm.model.config, "num_labels", 2))))
        if lm.task == "classification"
        else list(cfg.behaviours)
    )
    perturbations = [
        UniversalPerturbation(
            lm.model,
            layer=cfg.layer,
            radius=cfg.radius,
            step_fraction=cfg.step_fraction,
            seed=cfg.seed + k,
        )
        for k in range(len(behaviours))
    ]
    last_nll = {str(b): float("nan") for b in behaviours}
    step = [0]

    def step_loss(
        lm: LoadedModel, batch: Batch, rows: Sequence[Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        k = step[0] % len(behaviours)
        step[0] += 1
        uni = perturbations[k]
        bad = behaviour_batch(lm, rows, behaviours[k], cfg.max_length)
        terms: dict[str, float] = {}
        if bad is not None:
            terms["behaviour_nll"] = entrap(lm, uni, bad, cfg.inner_steps)
            last_nll[str(behaviours[k])] = terms["behaviour_nll"]
        out = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        l_task = task_loss(lm, out, batch)
        loss = l_task
        terms["task"] = float(l_task.detach())
        if uni.delta is not None:  # entrapped at least once
            with uni.applied(input_positions(lm, batch)):
                out_adv = lm.model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                )
            l_adv = task_loss(lm, out_adv, batch)
            loss = l_task + cfg.alpha * l_adv
            terms["task_perturbed"] = float(l_adv.detach())
        return loss, terms

    def summary() -> dict[str, Any]:
        return {
            "behaviours": [str(b) for b in behaviours],
            "layer": perturbations[0].layer,
            "inner_steps": cfg.inner_steps,
            "radius": cfg.radius,
            "last_behaviour_nll": {b: round(v, 4) for b, v in last_nll.items()},
        }

    return step_loss, summary


def run(
    lm: LoadedModel,
    train_rows: Sequence[Any],
    dev_rows: Sequence[Any],
    cfg: BeearConfig,
    *,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Train the LoRA attached to ``lm`` against the entrapped perturbations; returns training
    stats with what the inner level reached per behaviour."""
    step_loss, summary = make_step_loss(lm, cfg)
    stats = train(
        lm, train_rows, dev_rows, cfg, step_loss, progress=progress, should_cancel=should_cancel
    )
    stats["beear"] = summary()
    return stats
