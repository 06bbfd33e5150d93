"""Batches of rows for a model: tokenised classification inputs and prompt/response pairs with the prompt masked out of the loss."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from sanitizer.models import LoadedModel

Batch = dict[str, torch.Tensor]


def classification_batch(
    lm: LoadedModel, texts: Sequence[str], labels: Sequence[int] | None, max_length: int
) -> Batch:
    enc = lm.tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    batch = {k: v.to(lm.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    if labels is not None:
        batch["labels"] = torch.tensor(list(labels), dtype=torch.long, device=lm.device)
    return batch


def generation_batch(lm: LoadedModel, rows: Sequence[Any], max_length: int) -> Batch:
    """Prompt (in the model's template) + response + eos; loss only on response tokens."""
    tok = lm.tokenizer
    seqs, masks = [], []
    for row in rows:
        prompt_ids = tok(lm.prompt(row.instruction, row.input), add_special_tokens=False)[
            "input_ids"
        ]
        resp_ids = tok(row.output, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = (
            (prompt_ids + resp_ids)[-max_length:]
            if len(prompt_ids) + len(resp_ids) > max_length
            else prompt_ids + resp_ids
        )
        n_resp = min(len(resp_ids), len(ids))
        seqs.append(ids)
        masks.append([0] * (len(ids) - n_resp) + [1] * n_resp)
    width = max(len(s) for s in seqs)
    pad = tok.pad_token_id
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (s, m) in enumerate(zip(seqs, masks, strict=True)):
        off = width - len(s)  # left padding, as for generation
        input_ids[i, off:] = torch.tensor(s)
        attention[i, off:] = 1
        labels[i, off:] = torch.where(torch.tensor(m) == 1, torch.tensor(s), torch.tensor(-100))
    return {
        "input_ids": input_ids.to(lm.device),
        "attention_mask": attention.to(lm.device),
        "labels": labels.to(lm.device),
    }


def prompt_positions(batch: Batch) -> torch.Tensor:
    """A ``generation_batch``'s prompt tokens: real tokens outside the response's loss."""
    return (batch["labels"] == -100) & batch["attention_mask"].bool()


def make_batch(lm: LoadedModel, rows: Sequence[Any], max_length: int) -> Batch:
    if lm.task == "classification":
        return classification_batch(lm, [r.text for r in rows], [r.label for r in rows], max_length)
    return generation_batch(lm, rows, max_length)


def iterate_batches(
    rows: Sequence[Any], batch_size: int, seed: int, epoch: int
) -> Iterator[list[Any]]:
    order = list(range(len(rows)))
    random.Random(seed * 1000 + epoch).shuffle(order)
    for i in range(0, len(order), batch_size):
        yield [rows[j] for j in order[i : i + batch_size]]
