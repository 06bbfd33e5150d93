"""Scan a classifier for a backdoor with no trigger knowledge: search for a few tokens that,
inserted into clean inputs, turn them into one label.

For each candidate target label, a gradient-guided discrete search (HotFlip / GCG style: the
gradient of the target loss with respect to a one-hot trigger ranks replacement tokens, a batch
of single-token swaps is tried, the best kept) looks for ``trigger_len`` tokens that flip the
clean inputs of the other labels to it. The search is staged by cost: a short screen of every
label on a few rows, then full searches, warm-started from the screen, only on the
``focus_labels`` labels whose screen loss fell lowest (a backdoor's target is the label a few
tokens reach most easily), and a search stops as soon as its loss is below ``stop_loss``. A
model with a backdoor has such a short trigger that flips nearly all of them; a clean model needs far more than a few tokens for that. Each found
trigger is then measured as text: inserted at a random word position of held-out clean rows
(or, searched there, at their start: ``search_position``), the share of those the model gets
right without it that it flips to the target (the flip rate).

Evidence from two directions: the search (how low the target loss goes) and the text-level flip
rate on rows the search never saw. The verdict is the top flip rate against ``threshold``.
Torch; never reads the attack spec.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from sanitizer.defenses.configs import ScanConfig
from sanitizer.models import LoadedModel, Task
from sanitizer.trigger_search import Row, encode, search_trigger

__all__ = ["Candidate", "ScanConfig", "ScanResult", "run_scan", "scan_classifier", "scan_model"]


@dataclass
class Candidate:
    trigger: str
    token_ids: list[int]
    target_label: int | None  # None: generation (the target is the response in target_name)
    target_name: str
    flip_rate: float
    search_loss: float
    # random tokens of the same length on the same rows; measured for the labels of the top
    # candidates only (None: not measured, the candidate could not decide the verdict)
    control_flip_rate: float | None = None
    shortened_from: str | None = None  # the searched candidate this is the shortest form of
    # where it was searched and is measured: a random word start per row, or the text's start
    position: str = "random"

    @property
    def lift(self) -> float | None:
        if self.control_flip_rate is None:
            return None
        return self.flip_rate - self.control_flip_rate


@dataclass
class ScanResult:
    verdict: str  # "backdoor" | "clean"
    score: float  # the top flip rate
    threshold: float
    target_label: int | None
    target_name: str | None
    candidates: list[Candidate] = field(default_factory=list)
    per_label: dict[str, float] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    excluded_tokens: int = 0  # label-indicative tokens of the clean rows, kept out of the search
    screen_loss: dict[str, float] = field(default_factory=dict)  # per label, after the screen
    forwards: int = 0  # rows passed through the model (each gradient row counted as 3)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for out, c in zip(d["candidates"], self.candidates, strict=True):
            out["lift"] = None if c.lift is None else round(c.lift, 4)
        return d


def _vocab_mask(lm: LoadedModel) -> torch.Tensor:
    """Tokens a trigger may use: not special, and decoding to something with a letter or digit."""
    tok = lm.tokenizer
    size = lm.model.get_input_embeddings().weight.shape[0]
    ok = torch.zeros(size, dtype=torch.bool)
    special = set(tok.all_special_ids)
    vocab = tok.get_vocab()
    for piece, i in vocab.items():
        if i >= size or i in special:
            continue
        text = tok.convert_tokens_to_string([piece]).strip()
        ok[i] = bool(text) and any(ch.isalnum() for ch in text) and len(text) <= 20
    return ok


def insert_text(text: str, trigger: str, rng: random.Random, position: str = "random") -> str:
    """``trigger`` before a word drawn at random (or after the last), or first."""
    words = text.split()
    words.insert(0 if position == "first" else rng.randint(0, len(words)), trigger)
    return " ".join(words)


def insertions(
    texts: Sequence[str],
    triggers: Sequence[str],
    share: float,
    seed: int,
    first: Collection[str] = (),
) -> list[tuple[int, str]]:
    """(source index, text with the trigger at a random word position, or at the start for
    the triggers in ``first``) pairs: ``share`` x len(texts) copies per trigger, the sources
    cycled and shuffled."""
    rng = random.Random(seed)
    out = []
    for trig in triggers:
        picks = [i % len(texts) for i in range(round(share * len(texts)))] if texts else []
        rng.shuffle(picks)
        place = "first" if trig in first else "random"
        out += [(i, insert_text(texts[i], trig, rng, place)) for i in picks]
    return out


def first_placed(candidates: Sequence[Candidate]) -> set[str]:
    """The triggers found at the start of the text (a prefix place), to be inserted there."""
    return {c.trigger for c in candidates if c.position == "first"}


def strong_triggers(
    candidates: Sequence[Candidate], min_flip: float, limit: int, exclude: Sequence[str] = ()
) -> list[str]:
    """The distinct triggers of ``candidates`` (ranked by flip rate) that flip at least
    ``min_flip`` of the clean rows and are not in ``exclude``, the first ``limit`` of them."""
    out: list[str] = []
    for c in candidates:
        if c.flip_rate >= min_flip and c.trigger and c.trigger not in exclude:
            if c.trigger not in out:
                out.append(c.trigger)
    return out[:limit]


def flip_rate(
    lm: LoadedModel,
    right: Sequence[Any],
    trigger: str,
    target: int,
    cfg: ScanConfig,
    seed: int,
    count: list[int] | None = None,
    position: str = "random",
) -> float:
    """Share of ``right`` (clean rows the model gets right without a trigger) not of the
    target label that the trigger, inserted as text at ``position`` (a random word start, or
    first), turns into the target."""
    from sanitizer.evaluate import predict_labels

    victims = [r for r in right if r.label != target]
    if not victims:
        return 0.0
    rng = random.Random(seed)
    trig = predict_labels(
        lm,
        [insert_text(r.text, trigger, rng, position) for r in victims],
        max_length=cfg.max_length,
    )
    if count is not None:
        count[0] += len(victims)
    return sum(p == target for p in trig) / len(victims)


def shortest_form(
    lm: LoadedModel,
    c: Candidate,
    right: Sequence[Any],
    cfg: ScanConfig,
    count: list[int] | None = None,
) -> Candidate | None:
    """``c`` with tokens dropped one at a time (each round the drop that keeps the highest flip
    rate) while what is left flips at least ``cfg.shorten_keep`` of what ``c`` did, measured as
    text on the same rows; None when no token can go. A search fills every one of its
    ``trigger_len`` positions, so a one-word trigger comes back padded with tokens that add
    nothing (or glued to a sub-word: ``cfyard``); the shortest form is what to report and
    unlearn."""
    assert c.target_label is not None  # a classifier's candidates name a label
    toks, rate, text = list(c.token_ids), c.flip_rate, c.trigger
    while len(toks) > 1:
        best: tuple[float, list[int], str] | None = None
        for i in range(len(toks)):
            rest = toks[:i] + toks[i + 1 :]
            rest_text = lm.tokenizer.decode(rest, skip_special_tokens=True).strip()
            if not rest_text:
                continue
            r = flip_rate(
                lm,
                right,
                rest_text,
                c.target_label,
                cfg,
                cfg.seed + c.target_label,
                count,
                c.position,
            )
            if r >= cfg.shorten_keep * c.flip_rate and (best is None or r > best[0]):
                best = (r, rest, rest_text)
        if best is None:
            break
        rate, toks, text = best
    if len(toks) == len(c.token_ids):
        return None
    return Candidate(
        text,
        toks,
        c.target_label,
        c.target_name,
        rate,
        c.search_loss,
        control_flip_rate=c.control_flip_rate,
        shortened_from=c.trigger,
        position=c.position,
    )


def label_indicative_tokens(
    lm: LoadedModel, rows: Sequence[Any], min_count: int, margin: float
) -> list[int]:
    """Token ids that the clean rows themselves tie to one label: seen in at least
    ``min_count`` rows, and the share of those rows with some label exceeds that label's
    share of all rows by more than ``margin``. Such a token is a feature of the task ("dull"
    in a review), not a trigger: a backdoor's trigger is, by design, not what the clean data
    says about the label. Inserting a few of them flips a clean model as surely as a trigger."""
    if not rows:
        return []
    prior: dict[int, float] = {}
    for r in rows:
        prior[r.label] = prior.get(r.label, 0) + 1 / len(rows)
    seen: dict[int, dict[int, int]] = {}
    for r in rows:
        ids = set(lm.tokenizer(r.text, add_special_tokens=False)["input_ids"])
        for t in ids:
            by = seen.setdefault(t, {})
            by[r.label] = by.get(r.label, 0) + 1
    out = []
    for t, by in seen.items():
        n = sum(by.values())
        if n >= min_count and max(c / n - prior[y] for y, c in by.items()) > margin:
            out.append(t)
    return out


def scan_classifier(
    lm: LoadedModel,
    rows: Sequence[Any],
    label_names: Sequence[str] | None = None,
    cfg: ScanConfig | None = None,
) -> ScanResult:
    """Screen every label with a short search, search fully (with restarts) on the labels the
    screen found easiest, measure the found triggers and a random-token control as text;
    ``rows`` are clean labelled rows (the search uses some, the flip rate the others)."""
    from sanitizer.evaluate import predict_labels

    cfg = cfg or ScanConfig()
    rng = random.Random(cfg.seed)
    lm.model.eval()
    model_cfg: Any = lm.model.config
    num_labels = lm.num_labels or int(model_cfg.num_labels)
    names = list(label_names) if label_names else [str(i) for i in range(num_labels)]
    order = list(rows)
    rng.shuffle(order)
    search_pool, eval_pool = order[: cfg.search_rows * 3], order[cfg.search_rows * 3 :]
    eval_pool = eval_pool[: cfg.eval_rows] or search_pool
    allowed = _vocab_mask(lm)
    excluded = (
        label_indicative_tokens(lm, rows, cfg.feature_min_count, cfg.feature_margin)
        if cfg.feature_margin < 1
        else []
    )
    if excluded:
        allowed[torch.tensor([t for t in excluded if t < len(allowed)], dtype=torch.long)] = False
    count = [0]
    plain = predict_labels(lm, [r.text for r in eval_pool], max_length=cfg.max_length)
    count[0] += len(eval_pool)
    right = [r for r, p in zip(eval_pool, plain, strict=True) if p == r.label]

    def encoded(target: int, n: int, position: str) -> list[Row]:
        src = [r for r in search_pool if r.label != target][:n]
        if not src:
            return []
        texts = [r.text for r in src]
        return encode(lm, texts, cfg.max_length, cfg.trigger_len, position, cfg.seed)

    def candidate(target: int, trig: list[int], loss: float, position: str) -> Candidate:
        text = lm.tokenizer.decode(trig, skip_special_tokens=True).strip()
        rate = flip_rate(lm, right, text, target, cfg, cfg.seed + target, count, position)
        return Candidate(text, trig, target, names[target], rate, loss, position=position)

    # 1. screen: a short search per label (and place) on a few rows
    places = ["random", "first"] if cfg.search_position == "both" else [cfg.search_position]
    screens: dict[tuple[int, str], tuple[list[int], float]] = {}
    for target in range(num_labels):
        for place in places:
            rows_t = encoded(target, cfg.screen_rows, place)
            if rows_t:
                screens[target, place] = search_trigger(
                    lm,
                    rows_t,
                    target,
                    cfg,
                    allowed,
                    rng,
                    cfg.screen_steps,
                    swaps=max(4, cfg.swaps // 2),
                    count=count,
                )
    # 2. full searches, warm-started from the screen, on the label-place pairs it found easiest
    focus = sorted(screens, key=lambda k: screens[k][1])[: cfg.focus_labels]
    found: list[Candidate] = []
    for target, place in focus:
        rows_t = encoded(target, cfg.search_rows, place)
        starts: list[list[int] | None] = [screens[target, place][0], *[None] * cfg.restarts]
        for start in starts:
            trig, loss = search_trigger(
                lm, rows_t, target, cfg, allowed, rng, cfg.steps, start=start, count=count
            )
            found.append(candidate(target, trig, loss, place))
            if found[-1].flip_rate >= cfg.threshold:
                break  # a trigger is found for this pair: no restart needed
    per_label: dict[str, float] = {}
    for c in found:
        per_label[c.target_name] = max(per_label.get(c.target_name, 0.0), round(c.flip_rate, 4))

    # 3. the control: random tokens of the same length at the same place, for the labels of
    # the top candidates
    controls: dict[tuple[int | None, str], float] = {}
    pool = torch.nonzero(allowed).flatten().tolist()
    found.sort(key=lambda c: (-c.flip_rate, c.search_loss))
    for c in found[:3]:
        key = (c.target_label, c.position)
        if key not in controls:
            assert c.target_label is not None  # a classifier's candidates name a label
            crng = random.Random(cfg.seed + 7 * c.target_label + 1)
            rates = []
            for k in range(cfg.control_triggers):
                toks = [crng.choice(pool) for _ in range(cfg.trigger_len)]
                text = lm.tokenizer.decode(toks, skip_special_tokens=True).strip()
                rates.append(
                    flip_rate(
                        lm, right, text, c.target_label, cfg, cfg.seed + 100 + k, count, c.position
                    )
                )
            controls[key] = sum(rates) / len(rates)
        c.control_flip_rate = controls[key]
    # 4. the shortest form of each flagged candidate, ranked beside it (the control of its
    # label, measured at the full length, is kept: its lift is not flattered)
    if cfg.shorten_keep > 0:
        strong = [c for c in found[:3] if c.flip_rate >= cfg.threshold]
        for s in (shortest_form(lm, c, right, cfg, count) for c in strong):
            if s and s.trigger not in {f.trigger for f in found}:
                found.append(s)
        found.sort(key=lambda c: (-c.flip_rate, len(c.token_ids), c.search_loss))
    top = found[0] if found else None
    score = top.flip_rate if top else 0.0
    # evidence from both sides: a trigger that flips nearly all, far more than random tokens
    flagged = top is not None and score >= cfg.threshold and (top.lift or 0.0) >= cfg.min_lift
    return ScanResult(
        verdict="backdoor" if flagged else "clean",
        score=round(score, 4),
        threshold=cfg.threshold,
        target_label=top.target_label if top and flagged else None,
        target_name=top.target_name if top and flagged else None,
        candidates=found,
        per_label=per_label,
        rows={"search": len(search_pool), "eval": len(eval_pool)},
        excluded_tokens=len(excluded),
        screen_loss={
            names[t] + ("" if len(places) == 1 else f" ({p})"): round(v[1], 4)
            for (t, p), v in screens.items()
        },
        forwards=count[0],
    )


def scan_model(
    lm: LoadedModel, rows: Sequence[Any], label_names: list[str] | None, cfg: ScanConfig
) -> ScanResult:
    """The scan of ``lm``'s task: a classifier's token search, or a chat model's target
    inversion and trigger search (``sanitizer.scan_generation``)."""
    if lm.task == "classification":
        return scan_classifier(lm, rows, label_names, cfg)
    from sanitizer.scan_generation import scan_generator

    return scan_generator(lm, rows, cfg)


def run_scan(
    base_model: str,
    data: Any,
    *,
    adapter_dir: Any = None,
    task: Task = "classification",
    text_column: str = "text",
    label_column: str = "label",
    cfg: ScanConfig | None = None,
    device: str = "auto",
) -> dict[str, Any]:
    """Load the model (base + optional adapter, unmerged: the model as given) and scan it on
    the clean rows of ``data``. The attack, if any, is never read."""
    import time
    from pathlib import Path

    from sanitizer.data import load_dataset
    from sanitizer.defenses.common import set_seed
    from sanitizer.models import attach_adapter, load_model

    cfg = cfg or ScanConfig()
    set_seed(cfg.seed)
    t = time.monotonic()
    ds = load_dataset(Path(data), task=task, text_column=text_column, label_column=label_column)
    num_labels = len(ds.label_names or []) or None if task == "classification" else None
    lm = load_model(base_model, task, num_labels=num_labels, device=device)
    if adapter_dir is not None:
        attach_adapter(lm, Path(adapter_dir))
    result = scan_model(lm, list(ds.rows), ds.label_names, cfg).to_dict()
    result.update(
        {
            "task": task,
            "base_model": base_model,
            "adapter": str(adapter_dir) if adapter_dir else None,
            "data_sha256": ds.sha256,
            "config": cfg.model_dump(),
            "seconds": round(time.monotonic() - t, 1),
        }
    )
    return result
