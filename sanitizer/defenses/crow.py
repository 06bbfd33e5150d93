"""CROW: internal consistency regularisation under an adversarial embedding perturbation.

Min et al., "Eliminating Backdoors from Large Language Models via Internal Consistency
Regularization" (ICML 2025); docs/METHODS_NOTES.md (CROW). No teacher, no trigger knowledge.

One step (docs/METHODS_NOTES.md, CROW):
    H0      = Emb(x)                                   (gradient enabled)
    L_cons  = mean_{l,b,t} [1 - cos(H^l, H^{l+1})]     real tokens only (Ours: with the mask)
    H_adv   = H0 + eps * sign(dL_cons/dH0)             (FGSM, one step)
    L       = L_task(x) + alpha * L_cons(H_adv)

The released code runs three forwards (clean consistency, adversarial, task). The task
loss and the clean consistency loss come from the *same* clean forward, so we compute both
from one forward (keeping its graph for the task loss): 2 forwards + 2 backwards, with the
same gradients.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from sanitizer.defenses.batching import Batch
from sanitizer.defenses.common import CancelFn, ProgressFn, task_loss, train
from sanitizer.defenses.configs import CrowConfig
from sanitizer.defenses.perturb import embedding_leaf, fgsm_embeds
from sanitizer.models import LoadedModel


def consistency_per_pair(
    hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """1 - cos(H^l, H^{l+1}) for each layer pair (1,2)...(L-2,L-1) of the HF ``hidden_states``
    tuple, averaged over the tokens the mask marks (every position without one): shape
    (pairs,). Index 0 is the embedding output and index L the final (normed) output: both are
    skipped, as in the released code."""
    layers = hidden_states[1:-1]
    if len(layers) < 2:
        raise ValueError("CROW needs a model with at least 3 layers")
    gaps = torch.stack(
        [
            1 - F.cosine_similarity(a.float(), b.float(), dim=-1)
            for a, b in zip(layers[:-1], layers[1:], strict=True)
        ],
        dim=0,
    )  # (pairs, B, T)
    if attention_mask is None:
        return gaps.mean(dim=(1, 2))
    mask = attention_mask.to(gaps.dtype).unsqueeze(0)
    return (gaps * mask).sum(dim=(1, 2)) / mask.sum().clamp_min(1)


def consistency_loss(
    hidden_states: Sequence[torch.Tensor], attention_mask: torch.Tensor | None
) -> torch.Tensor:
    """L_cons: the mean over layer pairs (``consistency_per_pair``) and real tokens of
    1 - cos(H^l, H^{l+1}). Every pair has the same tokens, so the mean of the per-pair means
    is the mean over (pair, token)."""
    return consistency_per_pair(hidden_states, attention_mask).mean()


def _forward_embeds(lm: LoadedModel, embeds: torch.Tensor, attention_mask: torch.Tensor):
    return lm.model(inputs_embeds=embeds, attention_mask=attention_mask, output_hidden_states=True)


def make_step_loss(cfg: CrowConfig):
    def step_loss(
        lm: LoadedModel, batch: Batch, rows: Sequence[Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        mask = batch["attention_mask"]
        cons_mask = mask if cfg.mask_padding else None
        h0 = embedding_leaf(lm, batch)
        out = _forward_embeds(lm, h0, mask)
        l_cons = consistency_loss(out.hidden_states, cons_mask)
        l_task = task_loss(lm, out, batch)
        h_adv = fgsm_embeds(l_cons, h0, cfg.epsilon)  # dL_cons/dH0 only
        out_adv = _forward_embeds(lm, h_adv, mask)
        l_adv = consistency_loss(out_adv.hidden_states, cons_mask)
        loss = l_task + cfg.alpha * l_adv
        return loss, {
            "task": float(l_task.detach()),
            "cons": float(l_cons.detach()),
            "cons_adv": float(l_adv.detach()),
        }

    return step_loss


def run(
    lm: LoadedModel,
    train_rows: Sequence[Any],
    dev_rows: Sequence[Any],
    cfg: CrowConfig,
    *,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Train the LoRA attached to ``lm`` with the CROW objective; returns training stats."""
    return train(
        lm,
        train_rows,
        dev_rows,
        cfg,
        make_step_loss(cfg),
        progress=progress,
        should_cancel=should_cancel,
    )
