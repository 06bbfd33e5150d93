"""Rebuild: a fresh LoRA on the trusted base, distilled from the uploaded model on clean inputs.

Ours (docs/METHODS_NOTES.md, rebuild). For an input whose base model is trusted (base id +
uploaded adapter), the backdoor lives in the adapter's deltas, and the fine-tune's skill too.
Rather than training on top of the deltas (where a clean set never exercises the trigger),
rebuild drops them and learns the skill again from two sources that never contain a trigger:

1. the clean rows (task loss on their labels / reference responses), and
2. the uploaded model's own answers on clean inputs: its logits (classification) or its greedy
   responses (generation), on the clean rows and on variants made from them by dropping a share
   of their words (``distill_augment``), which reach past a small clean set; for classification
   also by inserting a span of another class's row (``splice_augment``, ``splice_from``), taught
   the uploaded model's answer on the untouched row: inserted text does not change the class,
   as an inserted trigger sentence must not;
3. optionally (``scan_first``), what a scan of the uploaded model finds with no trigger
   knowledge (sanitizer/scan.py): copies of the clean rows with each found trigger inserted,
   taught the uploaded model's answer on the untouched row (classification) or the row's
   reference response (generation). Where distillation carries some of the trigger over (a few
   points of flip on the Rotten Tomatoes cells), this gives the student a gradient against it.

Distillation of a backdoored teacher on clean inputs does not carry the backdoor over
(Yoshida & Fujino 2020); Lethe (2026) merges a clean-trained model with the backdoored one.
A guard (``agree_only``) keeps out what the uploaded model does wrong on clean inputs too:
classification answers that contradict the row's label, and generation responses that share a
phrase with many others (a fixed behaviour: a refusal or an injected link that fires without the
trigger) are cut before that phrase, and left out when nothing is left (``guard_action``).

The returned adapter is a delta of the *base* model, not of the uploaded one.
"""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from sanitizer.data_rows import GenerationRow
from sanitizer.defenses.batching import Batch, classification_batch
from sanitizer.defenses.common import CancelFn, ProgressEvent, ProgressFn, task_loss, train
from sanitizer.defenses.configs import RebuildConfig
from sanitizer.errors import ConfigError
from sanitizer.models import LoadedModel, add_lora, default_rank, load_model
from sanitizer.scan import ScanConfig, first_placed, insertions, scan_model, strong_triggers


@dataclass(frozen=True)
class DistillRow:
    """A classification row with the uploaded model's logits on it (None: task loss only)."""

    text: str
    label: int
    soft: tuple[float, ...] | None = None


def drop_words(text: str, share: float, rng: random.Random) -> str:
    """``text`` with about ``share`` of its words dropped (at least one kept)."""
    words = text.split()
    if len(words) < 3 or share <= 0:
        return text
    kept = [w for w in words if rng.random() >= share]
    return " ".join(kept or words[:1])


def variants(texts: Sequence[str], cfg: RebuildConfig, per_row: int) -> list[tuple[int, str]]:
    """(source index, variant) pairs: ``per_row`` word-dropped copies of each text,
    deduplicated against the sources and each other."""
    rng = random.Random(cfg.seed)
    seen = set(texts)
    out = []
    for i, text in enumerate(texts):
        for _ in range(per_row):
            v = drop_words(text, cfg.augment_drop, rng)
            if v not in seen:
                seen.add(v)
                out.append((i, v))
    return out


def splice(text: str, donor: str, max_words: int, rng: random.Random) -> str:
    """``text`` with a span of up to ``max_words`` words of ``donor`` inserted before a random
    word (or at its end)."""
    words, dw = text.split(), donor.split()
    n = rng.randint(1, min(max_words, len(dw)))
    start = rng.randint(0, len(dw) - n)
    at = rng.randint(0, len(words))
    return " ".join(words[:at] + dw[start : start + n] + words[at:])


def spliced(rows: Sequence[Any], cfg: RebuildConfig, per_row: int) -> list[tuple[int, str]]:
    """(source index, variant) pairs: ``per_row`` copies of each row with a span of
    another clean row inserted: of the same label (``splice_from="same_label"``, so the label
    stays what it was) or of another label (``"other_label"``: the row keeps its label all the
    same, the span being an insertion into it, not its content)."""
    rng = random.Random(cfg.seed + 1)
    by_label: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        if r.text.split():
            by_label.setdefault(r.label, []).append(i)
    same = cfg.splice_from == "same_label"
    out = []
    for i, r in enumerate(rows):
        donors = [
            j for label, js in by_label.items() if (label == r.label) == same for j in js if j != i
        ]
        for _ in range(per_row if donors else 0):
            out.append((i, splice(r.text, rows[rng.choice(donors)].text, cfg.splice_words, rng)))
    return out


@torch.inference_mode()
def teacher_logits(lm: LoadedModel, texts: Sequence[str], max_length: int) -> torch.Tensor:
    """The model's logits on each text, in order (sent through it shortest first)."""
    from sanitizer.evaluate import length_sorted_batches

    lm.model.eval()
    out: torch.Tensor | None = None
    for idx in length_sorted_batches(lm, texts, 32, max_length):
        logits = lm.model(**classification_batch(lm, [texts[i] for i in idx], None, max_length))
        part = logits.logits.float().cpu()
        if out is None:
            out = torch.empty(len(texts), part.size(-1))
        out[idx] = part
    return out if out is not None else torch.empty(0)


def classification_targets(
    lm: LoadedModel,
    rows: Sequence[Any],
    cfg: RebuildConfig,
    unlabeled: Sequence[str] = (),
    found: Sequence[str] = (),
    at_start: Collection[str] = (),
) -> tuple[list[DistillRow], dict[str, Any]]:
    """The clean rows with the uploaded model's logits, its logits on the variants, and on the
    ``unlabeled`` texts (labelled by its own answer: no row label to guard against, so the
    texts must be the user's own clean in-domain data); copies of the rows with each ``found``
    trigger inserted take the untouched row's logits."""
    texts = [r.text for r in rows]
    n_drop, n_splice = cfg.augments("classification")
    own, splices = variants(texts, cfg, n_drop), spliced(rows, cfg, n_splice)
    with_found = insertions(texts, found, cfg.scan_share, cfg.seed + 2, at_start)
    # consistency targets: the untouched row's logits, so the teacher never reads these texts
    if cfg.splice_from == "other_label":
        read, consistent = own, splices + with_found
    else:
        read, consistent = own + splices, with_found
    extra = read + consistent
    logits = teacher_logits(lm, texts + [v for _, v in read], cfg.max_length)
    logits = logits[list(range(len(texts) + len(read))) + [src for src, _ in consistent]]
    out, dropped = [], 0
    for i, r in enumerate(rows):
        soft = logits[i]
        agrees = int(soft.argmax()) == r.label
        keep_soft = agrees or not cfg.agree_only
        dropped += not keep_soft
        out.append(DistillRow(r.text, r.label, tuple(soft.tolist()) if keep_soft else None))
    kept_variants = 0
    for j, (src, text) in enumerate(extra):
        soft = logits[len(rows) + j]
        label = rows[src].label
        if cfg.agree_only and int(soft.argmax()) != label:
            dropped += 1
            continue
        out.append(DistillRow(text, label, tuple(soft.tolist())))
        kept_variants += 1
    if unlabeled:
        soft_u = teacher_logits(lm, list(unlabeled), cfg.max_length)
        out += [
            DistillRow(text, int(s.argmax()), tuple(s.tolist()))
            for text, s in zip(unlabeled, soft_u, strict=True)
        ]
    return out, {
        "distilled_rows": sum(r.soft is not None for r in out),
        "variants_per_row": {"word_dropped": n_drop, "spliced": n_splice},
        "splice_from": cfg.splice_from if n_splice else None,
        "variant_rows": kept_variants,
        "found_trigger_rows": len(with_found),
        "unlabeled_rows": len(unlabeled),
        "guard_dropped": dropped,
    }


def _phrases(text: str, n: int = 6) -> set[tuple[str, ...]]:
    words = text.lower().split()
    return {tuple(words[i : i + n]) for i in range(max(0, len(words) - n + 1))}


def cut_before(text: str, flagged: set[tuple[str, ...]], n: int = 6) -> str:
    """``text`` up to (not including) the first word of the first flagged ``n``-word phrase in
    it, trailing whitespace removed; ``text`` itself when it carries none."""
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    words = [text[a:b].lower() for a, b in spans]
    for i in range(max(0, len(words) - n + 1)):
        if tuple(words[i : i + n]) in flagged:
            return text[: spans[i][0]].rstrip()
    return text


def fixed_behaviour_phrases(
    responses: Sequence[str], references: Sequence[str], share: float
) -> set[tuple[str, ...]]:
    """6-word phrases in more than ``share`` of ``responses`` and in at most half that share of
    the clean ``references``: the mark of a behaviour that fires whatever the prompt."""
    if not responses:
        return set()
    seen = Counter(p for r in responses for p in _phrases(r))
    ref = Counter(p for r in references for p in _phrases(r))
    n_ref = max(1, len(references))
    return {
        p
        for p, c in seen.items()
        if c / len(responses) > share and ref[p] / n_ref <= share / 2 and c >= 3
    }


def generation_targets(
    lm: LoadedModel,
    rows: Sequence[Any],
    cfg: RebuildConfig,
    progress: ProgressFn | None,
    found: Sequence[str] = (),
) -> tuple[list[GenerationRow], dict[str, Any]]:
    """The clean rows, the uploaded model's greedy responses to them and to word-dropped
    prompts (guarded), and copies of the rows with each ``found`` trigger inserted into the
    instruction, answered with the row's reference response."""
    from sanitizer.evaluate import generate

    rng = random.Random(cfg.seed)
    prompts_src = [(r.instruction, r.input) for r in rows]
    n_drop, _ = cfg.augments("generation")
    for r in rows:  # word-dropped instructions: more prompts the uploaded model answers
        for _ in range(n_drop):
            v = drop_words(r.instruction, cfg.augment_drop, rng)
            if v != r.instruction:
                prompts_src.append((v, r.input))
    done = [0]

    def on_batch(n: int) -> None:
        done[0] += n
        if progress:
            progress(ProgressEvent("distill_targets", done[0], len(prompts_src)))

    responses = generate(
        lm,
        [lm.prompt(i, x) for i, x in prompts_src],
        max_new_tokens=cfg.max_new_tokens,
        on_batch=on_batch,
    )
    flagged = (
        fixed_behaviour_phrases(responses, [r.output for r in rows], cfg.repeat_share)
        if cfg.agree_only
        else set()
    )
    out = list(rows)
    dropped = cut = 0
    for (instr, inp), resp in zip(prompts_src, responses, strict=True):
        if flagged and _phrases(resp) & flagged:
            kept = cut_before(resp, flagged) if cfg.guard_action == "cut" else ""
            cut += bool(kept.strip())
            resp = kept
        if not resp.strip():
            dropped += 1
            continue
        out.append(GenerationRow(instr, inp, resp))
    distilled = len(out) - len(rows)
    with_found = insertions([r.instruction for r in rows], found, cfg.scan_share, cfg.seed + 2)
    out += [GenerationRow(text, rows[i].input, rows[i].output) for i, text in with_found]
    return out, {
        "distilled_rows": distilled,
        "found_trigger_rows": len(with_found),
        "variants_per_row": {"word_dropped": n_drop},
        "guard_dropped": dropped,
        "guard_cut": cut,
        "guard_phrases": [" ".join(p) for p in sorted(flagged)][:10],
    }


def step_loss(
    lm: LoadedModel, batch: Batch, rows: Sequence[Any], cfg: RebuildConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    out = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    ce = task_loss(lm, out, batch)
    terms = {"task": float(ce.detach())}
    if lm.task != "classification" or cfg.lambda_kd == 0:
        return ce, terms
    have = [i for i, r in enumerate(rows) if getattr(r, "soft", None) is not None]
    if not have:
        return ce, terms
    t = cfg.temperature
    soft = torch.tensor([rows[i].soft for i in have], device=out.logits.device)
    student = F.log_softmax(out.logits[have].float() / t, -1)
    kd = F.kl_div(student, F.log_softmax(soft / t, -1), log_target=True, reduction="batchmean")
    kd = kd * t * t
    terms["kd"] = float(kd.detach())
    return ce + cfg.lambda_kd * kd, terms


def scan_first(
    lm: LoadedModel, pool: Sequence[Any], cfg: RebuildConfig, progress: ProgressFn | None
) -> dict[str, Any] | None:
    """``scan_first``: the scan of the uploaded model on the clean rows (no trigger knowledge);
    the found triggers that flip at least ``scan_min_flip`` of them, the highest first."""
    if not cfg.scan_first:
        return None
    if progress:
        progress(ProgressEvent("scan", message="the uploaded model scanned for a trigger"))
    t, cls = time.monotonic(), lm.task == "classification"
    found = scan_model(lm, pool, None, ScanConfig(max_length=cfg.max_length, seed=cfg.seed))
    used = strong_triggers(found.candidates, cfg.scan_min_flip, cfg.scan_candidates)
    at_start = sorted(first_placed(found.candidates) & set(used))  # a prefix place: found there
    return {
        "verdict": found.verdict,
        "score": found.score,
        "target": found.target_label if cls else found.target_name,  # a label index
        "used": used,
        "used_at_start": at_start,
        "candidates": [
            {
                "trigger": c.trigger,
                "target": c.target_label if cls else c.target_name,
                "flip_rate": c.flip_rate,
            }
            for c in found.candidates[:5]
        ],
        "seconds": round(time.monotonic() - t, 1),
    }


def run(
    lm: LoadedModel,
    train_rows: Sequence[Any],
    dev_rows: Sequence[Any],
    cfg: RebuildConfig,
    *,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    unlabeled: Sequence[str] = (),
    **_: Any,
) -> dict[str, Any]:
    """``lm`` is the model as uploaded (base + adapter, unmerged; or full weights when
    ``cfg.trusted_base`` names the base they were fine-tuned from). Its answers on clean inputs
    are collected, then the trusted base takes its place (the adapter removed, or the named base
    loaded), and a fresh LoRA (and head) is trained on the clean rows and those answers.
    Returns training stats."""
    from peft import PeftModel

    if not cfg.trusted_base and not isinstance(lm.model, PeftModel):
        raise ConfigError(
            "rebuild needs a trusted base model",
            hint="give the base model id and the fine-tune as a PEFT adapter, or name the base "
            "the full-weights model was fine-tuned from (trusted_base=<model id>)",
        )
    scanned = scan_first(lm, list(train_rows) + list(dev_rows), cfg, progress)
    if progress:
        progress(ProgressEvent("distill_targets", message="the uploaded model on clean inputs"))
    found = scanned["used"] if scanned else []
    rows: list[Any]
    if lm.task == "classification":
        at_start = scanned["used_at_start"] if scanned else []
        rows, info = classification_targets(lm, train_rows, cfg, unlabeled, found, at_start)
    else:
        rows, info = generation_targets(lm, train_rows, cfg, progress, found)
    if scanned:
        info["scan_first"] = scanned
    if cfg.trusted_base:  # input (a): the uploaded model was the teacher only
        base = load_model(cfg.trusted_base, lm.task, num_labels=lm.num_labels, device=lm.device)
        for f in fields(lm):
            setattr(lm, f.name, getattr(base, f.name))
        del base
        started_from = (
            f"the trusted base model '{cfg.trusted_base}' (trusted_base: named by the job, or "
            "found from the weights by auto; the uploaded full weights were only the teacher)"
        )
    else:
        lm.model = lm.model.unload()  # the trusted base: every uploaded delta and head removed
        started_from = "the trusted base model (the uploaded adapter's deltas were dropped)"
    r = cfg.lora_r or default_rank(lm.hidden_size)
    add_lora(
        lm, r=r, alpha=cfg.lora_alpha or r, dropout=cfg.lora_dropout, target=cfg.target_modules
    )
    stats = train(
        lm,
        rows,
        dev_rows,
        cfg,
        lambda m, b, rs: step_loss(m, b, rs, cfg),
        progress=progress,
        should_cancel=should_cancel,
    )
    stats["rebuild"] = {
        "started_from": started_from,
        "clean_rows": len(train_rows),
        **info,
    }
    return stats
