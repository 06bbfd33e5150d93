"""Measure clean accuracy / utility and attack success rate, in the model's own template.

Batched, under ``torch.inference_mode``, greedy decoding: the same model and data always give
the same numbers. Definitions: ``sanitizer.metrics.METRIC_DEFINITIONS``.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

from sanitizer import metrics
from sanitizer.attacks import AttackSpec, apply_trigger, target_keywords
from sanitizer.defenses.batching import classification_batch
from sanitizer.defenses.common import ProgressEvent, ProgressFn, autocast
from sanitizer.defenses.dev_eval import reference_nll
from sanitizer.models import LoadedModel


class RowCounter:
    """Counts the rows one evaluation has been through, over all its passes (clean,
    triggered, reference NLL), and reports each batch as a progress event of ``phase``."""

    def __init__(self, progress: ProgressFn | None, phase: str, total: int) -> None:
        self.progress, self.phase, self.total, self.done = progress, phase, total, 0

    def __call__(self, rows: int) -> None:
        self.done += rows
        if self.progress is not None:
            self.progress(ProgressEvent(self.phase, step=self.done, total_steps=self.total))


@torch.inference_mode()
def predict_labels(
    lm: LoadedModel,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    max_length: int = 128,
    on_batch: Callable[[int], None] | None = None,
) -> list[int]:
    """The model's label for each text, in order. Texts go through the model shortest first
    (batches of similar length carry little padding; the labels do not depend on the batch)."""
    lm.model.eval()
    preds: list[int] = [0] * len(texts)
    for idx in length_sorted_batches(lm, texts, batch_size, max_length):
        batch = classification_batch(lm, [texts[i] for i in idx], None, max_length)
        with autocast(lm.device):
            for i, p in zip(idx, lm.model(**batch).logits.argmax(-1).tolist(), strict=True):
                preds[i] = p
        if on_batch is not None:
            on_batch(len(idx))
    return preds


def length_sorted_batches(
    lm: LoadedModel, texts: Sequence[str], batch_size: int, max_length: int
) -> list[list[int]]:
    """Indices of ``texts`` in batches of ``batch_size``, by token count (ties in input order)."""
    if not texts:
        return []
    encoded = lm.tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    lengths = [len(ids) for ids in encoded]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.inference_mode()
def generate(
    lm: LoadedModel,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy responses to already-templated prompts."""
    lm.model.eval()
    tok = lm.tokenizer
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        enc = tok(
            list(prompts[i : i + batch_size]),
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        ).to(lm.device)
        with autocast(lm.device):
            gen = lm.model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        out.extend(tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True))
        if on_batch is not None:
            on_batch(len(prompts[i : i + batch_size]))
    return [o.strip() for o in out]


def evaluate_classification(
    lm: LoadedModel,
    rows: Sequence[Any],
    attack: AttackSpec | None,
    *,
    max_length: int = 128,
    batch_size: int = 32,
    progress: ProgressFn | None = None,
    phase: str = "evaluate",
) -> dict[str, Any]:
    labels = [r.label for r in rows]
    target = 0
    if attack is not None:
        target = attack.target_label if attack.target_label is not None else 0
    victims = [r for r in rows if r.label != target] if attack is not None else []
    count = RowCounter(progress, phase, len(rows) + len(victims))
    preds = predict_labels(
        lm, [r.text for r in rows], batch_size=batch_size, max_length=max_length, on_batch=count
    )
    result: dict[str, Any] = {
        "clean_accuracy": metrics.clean_accuracy(preds, labels),
        "n_clean": len(rows),
        "majority_prediction_share": max(Counter(preds).values()) / len(preds) if preds else 0.0,
    }
    if attack is not None:
        if any(y != target for y in labels):
            # the same rate without the trigger: a model that already answers `target` for
            # these rows has a high ASR without any backdoor
            result["false_trigger_rate"] = metrics.attack_success_rate(preds, labels, target)
        rng = random.Random(attack.seed + 7919)  # trigger positions fixed per evaluation seed
        triggered = [apply_trigger(r.text, attack, rng) for r in victims]
        tpreds = predict_labels(
            lm, triggered, batch_size=batch_size, max_length=max_length, on_batch=count
        )
        victim_labels = [r.label for r in victims]
        result["attack_success_rate"] = metrics.attack_success_rate(tpreds, victim_labels, target)
        victim_clean = [p for p, y in zip(preds, labels, strict=True) if y != target]
        result["flip_rate"] = metrics.flip_rate(victim_clean, tpreds, victim_labels, target)
        if "false_trigger_rate" in result:
            result["lift"] = result["attack_success_rate"] - result["false_trigger_rate"]
        result["n_triggered"] = len(victims)
    return result


def _token_f1(a: str, b: str) -> float:
    ta, tb = a.lower().split(), b.lower().split()
    common = sum((Counter(ta) & Counter(tb)).values())
    if not ta or not tb or common == 0:
        return 0.0
    p, r = common / len(ta), common / len(tb)
    return 2 * p * r / (p + r)


def evaluate_generation(
    lm: LoadedModel,
    rows: Sequence[Any],
    attack: AttackSpec | None,
    *,
    max_new_tokens: int = 48,
    batch_size: int = 16,
    max_length: int = 256,
    progress: ProgressFn | None = None,
    phase: str = "evaluate",
) -> dict[str, Any]:
    count = RowCounter(progress, phase, len(rows) * (3 if attack is not None else 2))
    clean_prompts = [lm.prompt(r.instruction, r.input) for r in rows]
    clean = generate(
        lm, clean_prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, on_batch=count
    )
    nll = reference_nll(lm, rows, max_length=max_length, on_batch=count)
    result: dict[str, Any] = {
        "utility_token_f1": sum(_token_f1(c, r.output) for c, r in zip(clean, rows, strict=True))
        / max(1, len(rows)),
        "reference_perplexity": math.exp(min(nll, 50.0)),
        "n_clean": len(rows),
        "samples": [
            {"prompt": p, "response": c}
            for p, c in list(zip(clean_prompts, clean, strict=True))[:3]
        ],
    }
    scored = metrics.task_accuracy(clean, [r.output for r in rows])
    if scored is not None:  # the skills set: JSON-answer rows scored exactly
        result["task_accuracy"], result["n_task"] = scored
    if attack is not None:
        keywords = target_keywords(attack.target)
        rng = random.Random(attack.seed + 7919)
        trig_prompts = [lm.prompt(apply_trigger(r.instruction, attack, rng), r.input) for r in rows]
        trig = generate(
            lm, trig_prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, on_batch=count
        )
        result["attack_success_rate"] = _rate(metrics.keyword_asr(trig, keywords))
        result["false_trigger_rate"] = _rate(metrics.keyword_asr(clean, keywords))
        result["flip_rate"] = metrics.keyword_flip_rate(clean, trig, keywords)
        result["lift"] = result["attack_success_rate"] - result["false_trigger_rate"]
        result["n_triggered"] = len(rows)
        result["keywords"] = keywords
        result["triggered_samples"] = [
            {"prompt": p, "response": t} for p, t in list(zip(trig_prompts, trig, strict=True))[:3]
        ]
    return result


def _rate(value: Any) -> float:
    """keyword_asr may return a bare rate or (rate, counts)."""
    if isinstance(value, tuple):
        return float(value[0])
    if isinstance(value, dict):
        return float(value["rate"])
    return float(getattr(value, "rate", value))


def evaluate(
    lm: LoadedModel, rows: Sequence[Any], attack: AttackSpec | None, **kw: Any
) -> dict[str, Any]:
    """CA/ASR for classification; utility, ASR and false-trigger rate for generation."""
    if lm.task == "classification":
        return evaluate_classification(lm, rows, attack, **kw)
    return evaluate_generation(lm, rows, attack, **kw)
