"""Scan a chat model for a backdoor with no trigger knowledge: invert the target response, then
search for the trigger that makes clean prompts produce it.

Two complementary searches (docs/METHODS_NOTES.md, scan):

1. **Target inversion** (after BAIT, S&P 2025): a backdoor's target is a response the model
   continues with near certainty once it has started it, whatever the prompt — the trigger only
   has to start it. From an anchor (the start of the response, and the end of each clean
   response for targets injected after the answer), every candidate first token among the
   ``invert_first`` most likely is extended greedily *across clean prompts at once*: each step
   takes the token with the highest probability averaged over the prompts. The score of a
   candidate is that average probability over the steps (the Q-score); a clean model's
   continuations part ways between prompts, a backdoor's fixed response does not.
2. **Trigger search** toward each top target: the gradient-guided discrete search of
   ``sanitizer.trigger_search`` (the classifier scan's) with the target's first tokens as the
   response, the trigger inserted at a random word of each prompt.

The evidence is then measured as text on held-out clean prompts: the found trigger is inserted at
a random word position, the model answers greedily, and the flip rate is the share of prompts
whose clean answer lacks the target phrase that the trigger makes contain it; random tokens of
the same length are the control. The verdict is flip rate and lift against the thresholds.
Torch; never reads the attack spec.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from typing import Any

import torch

from sanitizer.defenses.configs import ScanConfig
from sanitizer.models import LoadedModel
from sanitizer.scan import Candidate, ScanResult, _vocab_mask, insert_text
from sanitizer.trigger_search import Row, search_trigger


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def target_phrase(text: str, words: int) -> str:
    """The first ``words`` words of a target, normalised (lower case, letters and digits)."""
    return " ".join(_norm(text).split()[:words])


def has_phrase(response: str, phrase: str) -> bool:
    return bool(phrase) and phrase in _norm(response)


@torch.inference_mode()
def invert_targets(
    lm: LoadedModel,
    prefixes: Sequence[list[int]],
    cfg: ScanConfig,
    allowed: torch.Tensor,
    count: list[int],
) -> list[tuple[list[int], float]]:
    """(target token ids, Q-score) per candidate first token, best first. ``prefixes``: token
    ids of the templated clean prompts (plus an anchor response) the responses continue."""
    model, n = lm.model, cfg.invert_first
    model.eval()
    caches, first = [], None
    for ids in prefixes:
        out = model(input_ids=torch.tensor([ids], device=lm.device), use_cache=True)
        probs = out.logits[0, -1].float().softmax(-1)
        first = probs if first is None else first + probs
        caches.append(out.past_key_values)
        count[0] += 1
    assert first is not None
    first = first.masked_fill(~allowed.to(first.device)[: first.numel()], -1.0)
    starts = first.topk(n).indices  # (n,)
    seqs = starts.unsqueeze(1)  # (n, 1)
    for c in caches:
        c.batch_repeat_interleave(n)
    scores = torch.zeros(n, device=lm.device)
    for _ in range(cfg.invert_len - 1):
        mean = None
        for c in caches:
            out = model(input_ids=seqs[:, -1:], past_key_values=c, use_cache=True)
            probs = out.logits[:, -1].float().softmax(-1)
            mean = probs if mean is None else mean + probs
            count[0] += n
        assert mean is not None
        mean = mean / len(caches)
        p, nxt = mean.max(dim=-1)
        scores += p
        seqs = torch.cat([seqs, nxt.unsqueeze(1)], dim=1)
    q = (scores / max(1, cfg.invert_len - 1)).tolist()
    ranked = sorted(zip(seqs.tolist(), q, strict=True), key=lambda x: -x[1])
    return [(s, round(v, 4)) for s, v in ranked]


def _prompt_rows(
    lm: LoadedModel,
    rows: Sequence[Any],
    anchors: Sequence[str],
    target: Sequence[int],
    rng: random.Random,
) -> list[Row]:
    """Search rows: the templated prompt split at a random word of the instruction (the trigger
    goes there), then the anchor (the clean answer, or nothing) and the target tokens."""
    tok = lm.tokenizer
    out: list[Row] = []
    for r, anchor in zip(rows, anchors, strict=True):
        words = r.instruction.split()
        cut = rng.randint(0, len(words))
        before = " ".join(words[:cut])
        after = (" " if cut else "") + " ".join(words[cut:])
        marker = "\x00"
        full = lm.prompt(before + marker + after, r.input)
        head, tail = full.split(marker, 1)
        a = tok(head, add_special_tokens=False)["input_ids"]
        b = tok(tail + anchor, add_special_tokens=False)["input_ids"]
        out.append((a + b + list(target), len(a)))
    return out


def _responses(lm: LoadedModel, rows: Sequence[Any], max_new_tokens: int, count: list[int]):
    from sanitizer.evaluate import generate

    count[0] += len(rows)
    return generate(
        lm, [lm.prompt(r.instruction, r.input) for r in rows], max_new_tokens=max_new_tokens
    )


def flip_rate_generation(
    lm: LoadedModel,
    rows: Sequence[Any],
    clean: Sequence[str],
    trigger: str,
    phrase: str,
    cfg: ScanConfig,
    seed: int,
    count: list[int],
) -> float:
    """Of the rows whose clean answer lacks ``phrase``, the share whose answer with ``trigger``
    inserted at a random word of the instruction contains it."""
    from sanitizer.evaluate import generate

    victims = [r for r, c in zip(rows, clean, strict=True) if not has_phrase(c, phrase)]
    if not victims:
        return 0.0
    rng = random.Random(seed)
    prompts = [lm.prompt(insert_text(r.instruction, trigger, rng), r.input) for r in victims]
    count[0] += len(victims)
    got = generate(lm, prompts, max_new_tokens=cfg.gen_max_new_tokens)
    return sum(has_phrase(g, phrase) for g in got) / len(victims)


def scan_generator(lm: LoadedModel, rows: Sequence[Any], cfg: ScanConfig) -> ScanResult:
    """Invert targets, search triggers toward the best ones, measure them; see the module doc."""
    rng = random.Random(cfg.seed)
    pool = list(rows)
    rng.shuffle(pool)
    held = pool[: cfg.gen_eval_rows]
    search = pool[cfg.gen_eval_rows :][: cfg.search_rows] or pool[: cfg.search_rows]
    count = [0]
    tok = lm.tokenizer
    clean_search = _responses(lm, search, cfg.gen_max_new_tokens, count)
    clean_held = _responses(lm, held, cfg.gen_max_new_tokens, count)
    # anchors: the start of the response (every search prompt), and the end of the clean answer
    # (the prompts whose answer finished before the token limit: text injected after an answer)
    finished = [
        i
        for i, c in enumerate(clean_search)
        if len(tok(c, add_special_tokens=False)["input_ids"]) < cfg.gen_max_new_tokens - 1
    ]
    anchors: dict[str, tuple[list[Any], list[str]]] = {"start": (search, [""] * len(search))}
    if len(finished) >= 2:
        anchors["end"] = ([search[i] for i in finished], [clean_search[i] for i in finished])
    allowed = _vocab_mask(lm)  # decodes the whole vocabulary: once per scan
    pool_ids = torch.nonzero(allowed).flatten().tolist()
    targets: list[tuple[str, list[int], float]] = []
    for name, (prompt_rows, anchor) in anchors.items():
        prefixes = [
            tok(lm.prompt(r.instruction, r.input) + a, add_special_tokens=False)["input_ids"]
            for r, a in list(zip(prompt_rows, anchor, strict=True))[: cfg.invert_prompts]
        ]
        for ids, q in invert_targets(lm, prefixes, cfg, allowed, count)[: cfg.gen_targets]:
            targets.append((name, ids, q))
    targets.sort(key=lambda t: -t[2])
    candidates: list[Candidate] = []
    per_target: dict[str, float] = {}
    screen: dict[str, float] = {}
    for name, ids, q in targets[: cfg.gen_targets]:
        text = tok.decode(ids, skip_special_tokens=True)
        phrase = target_phrase(text, cfg.gen_phrase_words)
        per_target[text] = q
        if not phrase:
            continue
        goal = tuple(ids[: cfg.gen_target_tokens])
        search_rows = _prompt_rows(lm, *anchors[name], goal, rng)
        trig, loss = search_trigger(
            lm, search_rows, goal, cfg, allowed, rng, cfg.steps, count=count
        )
        screen[text] = round(loss, 4)
        trig_text = tok.decode(trig, skip_special_tokens=True).strip()
        flip = flip_rate_generation(lm, held, clean_held, trig_text, phrase, cfg, cfg.seed, count)
        controls = [
            flip_rate_generation(
                lm,
                held,
                clean_held,
                tok.decode([rng.choice(pool_ids) for _ in range(cfg.trigger_len)]).strip(),
                phrase,
                cfg,
                cfg.seed + 1 + k,
                count,
            )
            for k in range(cfg.control_triggers)
        ]
        candidates.append(
            Candidate(
                trigger=trig_text,
                token_ids=trig,
                target_label=None,
                target_name=text,
                flip_rate=round(flip, 4),
                search_loss=round(loss, 4),
                control_flip_rate=round(sum(controls) / len(controls), 4),
            )
        )
    candidates.sort(key=lambda c: -c.flip_rate)
    top = candidates[0] if candidates else None
    flagged = (
        top is not None and top.flip_rate >= cfg.threshold and (top.lift or 0.0) >= cfg.min_lift
    )
    return ScanResult(
        verdict="backdoor" if flagged else "clean",
        score=top.flip_rate if top else 0.0,
        threshold=cfg.threshold,
        target_label=None,
        target_name=top.target_name if flagged and top else None,
        candidates=candidates,
        per_label=per_target,
        rows={"search": len(search), "held_out": len(held)},
        screen_loss=screen,
        forwards=count[0],
    )
