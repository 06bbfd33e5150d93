"""Held-out measurements the training loop uses to pick its checkpoint: the reference NLL of the clean dev rows and per-row NLLs, with standard errors."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from sanitizer.defenses.batching import generation_batch, make_batch
from sanitizer.models import LoadedModel


@torch.inference_mode()
def reference_nll(
    lm: LoadedModel,
    rows: Sequence[Any],
    *,
    max_length: int = 256,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> float:
    """Mean per-token NLL of the reference responses (response tokens only), summed over every
    token, so it does not depend on the batch."""
    sums, counts = row_nll(
        lm, rows, max_length=max_length, batch_size=batch_size, on_batch=on_batch
    )
    return sum(sums) / max(1, sum(counts))


@torch.inference_mode()
def row_nll(
    lm: LoadedModel,
    rows: Sequence[Any],
    *,
    max_length: int = 256,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[float], list[int]]:
    """Per row: the summed NLL of its reference response tokens, and how many there are."""
    sums: list[float] = []
    counts: list[int] = []
    for i in range(0, len(rows), batch_size):
        batch = generation_batch(lm, rows[i : i + batch_size], max_length)
        logits = (
            lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            .logits[:, :-1]
            .float()
        )
        labels = batch["labels"][:, 1:]
        nll = F.cross_entropy(
            logits.transpose(1, 2), labels, ignore_index=-100, reduction="none"
        )  # (B, T); 0 where ignored
        sums += nll.sum(dim=1).tolist()
        counts += (labels != -100).sum(dim=1).tolist()
        if on_batch is not None:
            on_batch(len(rows[i : i + batch_size]))
    return sums, counts


def _ratio_stderr(sums: Sequence[float], counts: Sequence[int]) -> float:
    """Standard error of the ratio estimator sum(sums)/sum(counts) over rows (delta method)."""
    n = len(sums)
    if n < 2 or not sum(counts):
        return 0.0
    r = sum(sums) / sum(counts)
    mean_c = sum(counts) / n
    var = sum((s - r * c) ** 2 for s, c in zip(sums, counts, strict=True)) / (n - 1)
    return math.sqrt(var / n) / mean_c


@torch.no_grad()
def dev_stats(
    lm: LoadedModel, dev_rows: Sequence[Any], max_length: int, batch_size: int | None = None
) -> tuple[float, float]:
    """(dev score, its standard error). The score is higher-is-better: accuracy and its
    binomial sqrt(p(1-p)/n) for classification; minus the mean NLL per response token
    (``reference_nll``) and the ratio estimator's standard error over rows for generation.

    Default batch: 32 rows for classification, 8 for generation, whose full-vocabulary logits
    are large (SmolLM2-135M, 160 tokens: batch 32 raised the process's peak RSS by 3.1 GB,
    batch 8 by 1.1 GB)."""
    model = lm.model
    was_training = model.training
    model.eval()
    if lm.task == "classification":
        batch_size = batch_size or 32
        correct = 0
        for i in range(0, len(dev_rows), batch_size):
            batch = make_batch(lm, dev_rows[i : i + batch_size], max_length)
            labels = batch.pop("labels")
            correct += int((model(**batch).logits.argmax(-1) == labels).sum())
        score = correct / len(dev_rows) if dev_rows else 0.0
        stderr = math.sqrt(score * (1 - score) / len(dev_rows)) if dev_rows else 0.0
    else:
        sums, counts = row_nll(lm, dev_rows, max_length=max_length, batch_size=batch_size or 8)
        score = -sum(sums) / max(1, sum(counts))
        stderr = _ratio_stderr(sums, counts)
    if was_training:
        model.train()
    return score, stderr
