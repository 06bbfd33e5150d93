"""Unlearn: find the trigger with no trigger knowledge, then overwrite what was found.

Ours (docs/METHODS_NOTES.md, unlearn), for a model with no trusted base. A clean set never
contains the trigger, so clean-data training gets no gradient against it; this method brings
the trigger back into the picture. Each round:

1. ``scan`` searches for a few tokens that turn clean inputs into one label (a classifier:
   sanitizer/scan.py) or that make clean prompts produce an inverted target response (a chat
   model: sanitizer/scan_generation.py);
2. the found triggers that flip at least ``min_flip_rate`` of clean rows are inserted at random
   word positions into copies of the clean training rows (a chat row: into its instruction),
   which keep their clean labels or reference responses, and the LoRA is trained on the clean
   rows plus these copies;
3. the next round scans the trained model again, so what the first round's training left (or
   the next-strongest direction) is found and overwritten too.

The real trigger is seldom found verbatim (a sentence trigger is many tokens, and a search finds
the few that carry most of it); overwriting what the backdoor responds to is what counts.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sanitizer.data_rows import ClassificationRow, GenerationRow
from sanitizer.defenses.common import CancelFn, ProgressEvent, ProgressFn, train
from sanitizer.defenses.configs import UnlearnConfig
from sanitizer.defenses.finetune import step_loss
from sanitizer.models import LoadedModel
from sanitizer.scan import ScanConfig, first_placed, insertions, scan_model, strong_triggers


def triggered_copies(
    rows: Sequence[Any],
    triggers: Sequence[str],
    share: float,
    seed: int,
    first: Collection[str] = (),
) -> list[Any]:
    """``share`` × len(rows) copies per trigger, each with the trigger at a random word
    position (at the start for those in ``first``: found there) and the row's own clean label
    (a chat row: in its instruction, with its own reference response)."""
    chat = bool(rows) and isinstance(rows[0], GenerationRow)
    texts = [r.instruction if chat else r.text for r in rows]
    return [
        GenerationRow(text, rows[i].input, rows[i].output)
        if chat
        else ClassificationRow(text, rows[i].label)
        for i, text in insertions(texts, triggers, share, seed, first)
    ]


def run(
    lm: LoadedModel,
    train_rows: Sequence[Any],
    dev_rows: Sequence[Any],
    cfg: UnlearnConfig,
    *,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Scan, train on the clean rows + triggered copies, scan again; ``rounds`` times."""
    scan_cfg = ScanConfig(
        trigger_len=cfg.trigger_len, steps=cfg.scan_steps, max_length=cfg.max_length, seed=cfg.seed
    )
    pool = list(train_rows) + list(dev_rows)  # the scan's rows: clean, labelled
    unlearned: list[str] = []
    at_start: set[str] = set()  # of those, the ones found at the start of the text
    rounds: list[dict[str, Any]] = []
    stats: dict[str, Any] = {}
    for rnd in range(cfg.rounds):
        if progress:
            progress(ProgressEvent("scan", rnd, cfg.rounds, message=f"scan, round {rnd + 1}"))
        scan_cfg.seed = cfg.seed + 101 * rnd
        found = scan_model(lm, pool, None, scan_cfg)
        fresh = strong_triggers(found.candidates, cfg.min_flip_rate, cfg.candidates, unlearned)
        rounds.append(
            {
                "round": rnd + 1,
                "scan_score": found.score,
                "per_label": found.per_label,
                "unlearned": fresh,
                "candidates": [
                    {"trigger": c.trigger, "target": c.target_name, "flip_rate": c.flip_rate}
                    for c in found.candidates[:5]
                ],
            }
        )
        if not fresh:
            break
        unlearned += fresh
        at_start |= first_placed(found.candidates) & set(fresh)
        rows = list(train_rows) + triggered_copies(
            train_rows, unlearned, cfg.triggered_share, cfg.seed + rnd, at_start
        )
        stats = train(
            lm,
            rows,
            dev_rows,
            cfg,
            step_loss,
            progress=progress,
            should_cancel=should_cancel,
        )
    if not stats:  # nothing found in the first round: the clean rows alone (plain fine-tuning)
        stats = train(
            lm, train_rows, dev_rows, cfg, step_loss, progress=progress, should_cancel=should_cancel
        )
    stats["unlearn"] = {
        "rounds": rounds,
        "unlearned_triggers": unlearned,
        "inserted_at_start": sorted(at_start),
    }
    return stats
