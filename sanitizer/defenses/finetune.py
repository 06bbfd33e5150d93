"""Clean fine-tuning: the honest control. Same LoRA, same data, task loss only.

Papers (and our benchmark) show it often leaves the backdoor in place; every report shows
it beside the defenses so a reader can see what the defense adds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sanitizer.defenses.batching import Batch
from sanitizer.defenses.common import CancelFn, ProgressFn, task_loss, train
from sanitizer.defenses.configs import FinetuneConfig
from sanitizer.models import LoadedModel


def step_loss(
    lm: LoadedModel, batch: Batch, rows: Sequence[Any]
) -> tuple[torch.Tensor, dict[str, float]]:
    out = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    loss = task_loss(lm, out, batch)
    return loss, {"task": float(loss.detach())}


def run(
    lm: LoadedModel,
    train_rows: Sequence[Any],
    dev_rows: Sequence[Any],
    cfg: FinetuneConfig,
    *,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Train the LoRA already attached to ``lm`` on the clean rows; returns training stats."""
    return train(
        lm, train_rows, dev_rows, cfg, step_loss, progress=progress, should_cancel=should_cancel
    )
