"""How much of a classifier's flip rate is the trigger's, and how much any insertion's: the flip
rate under the cell's real trigger beside the flip rate under *control* insertions of the same
shape (each word of the trigger replaced by random lower-case letters of the same length,
digits by digits; inserted by the attack's own rule, at the same positions). A model with no
backdoor left flips about as many rows under the trigger as under its controls; the gap is what
is left of the backdoor. Evaluation only (it reads the attack spec, as the benchmark's
evaluation does), never a defense input:

    python -m benchmarks.probes.control_flip_probe rotten_tomatoes-badnet-mpnet --seed 0 \
        --adapter rebuild --adapter poisoned > benchmarks/probes/control_flip-<cell>-s<seed>.json

``--adapter`` names one of: ``poisoned`` (the cell's attack adapter), ``twin`` (its clean twin),
or a finished run of ``benchmarks/run.py`` (``rebuild``, ``finetune``, ``rebuild-drop2``...),
whose sanitized adapter is kept in the cache. One torch thread.
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
from pathlib import Path

import torch

from benchmarks.cells import CELLS, DEV_CELLS
from benchmarks.inputs import attack_spec, bench_dir, subset
from sanitizer.attacks import triggered_test_set
from sanitizer.data import load_dataset
from sanitizer.data_rows import ClassificationRow
from sanitizer.evaluate import predict_labels
from sanitizer.metrics import flip_rate
from sanitizer.models import attach_adapter, load_model


def control_trigger(trigger: str, rng: random.Random) -> str:
    """``trigger`` with every letter replaced by a random lower-case letter and every digit by a
    random digit: the same words, lengths and spacing, none of the meaning."""
    return "".join(
        rng.choice(string.ascii_lowercase)
        if ch.isalpha()
        else rng.choice(string.digits)
        if ch.isdigit()
        else ch
        for ch in trigger
    )


def adapter_folder(cell_name: str, seed: int, name: str) -> Path:
    if name in ("poisoned", "twin"):
        suffix = "-clean" if name == "twin" else ""
        return bench_dir() / "adapters" / f"{cell_name}-s{seed}{suffix}"
    return bench_dir() / "runs" / cell_name / f"{name}-s{seed}" / "adapter"


def main() -> None:
    cells = {c.name: c for c in [*CELLS, *DEV_CELLS] if c.task == "classification"}
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cell", choices=sorted(cells))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--adapter", action="append", required=True)
    ap.add_argument("--controls", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cell = cells[args.cell]
    test = load_dataset(subset(cell, args.seed)["test"], task="classification")
    spec = attack_spec(cell, args.seed, test.label_names)
    if not spec.trigger:
        raise SystemExit(f"{cell.attack} has no trigger words to imitate (a template)")
    rng = random.Random(args.seed)
    specs = {"trigger": spec} | {
        f"control{k}": spec.model_copy(update={"trigger": control_trigger(spec.trigger, rng)})
        for k in range(args.controls)
    }
    rows = [r for r in test.rows if isinstance(r, ClassificationRow)]
    labels, target = [r.label for r in rows], int(spec.target_label or 0)
    out: dict[str, object] = {
        "cell": cell.name,
        "seed": args.seed,
        "triggers": {k: s.trigger for k, s in specs.items()},
    }
    for name in args.adapter:
        lm = load_model(cell.student, "classification", num_labels=len(test.label_names or []))
        attach_adapter(lm, adapter_folder(cell.name, args.seed, name))
        clean = predict_labels(lm, [r.text for r in rows])
        rates = {}
        for k, s in specs.items():
            # the triggered set holds the non-target rows only, in order: spread its answers
            # back over all rows (target rows keep their clean answer; flip_rate skips them)
            triggered = [r.text for r in triggered_test_set(test, s).rows]  # type: ignore[union-attr]
            trig = iter(predict_labels(lm, triggered))
            preds = [p if y == target else next(trig) for p, y in zip(clean, labels, strict=True)]
            rates[k] = round(flip_rate(clean, preds, labels, target), 4)
        ctrl = [v for k, v in rates.items() if k != "trigger"]
        out[name] = {
            "flip_rates": rates,
            "control_mean": round(sum(ctrl) / len(ctrl), 4),
            "trigger_minus_control": round(rates["trigger"] - sum(ctrl) / len(ctrl), 4),
        }
        print(name, out[name], flush=True, file=sys.stderr)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
