"""Measure `gradient_checkpointing` on a real model: peak memory and seconds per step of a
defense's training with and without it, and how far apart the two trained adapters end up.

Each setting runs in its own child process (peak RSS is a per-process high-water mark, Linux
VmHWM), on the same clean rows, seed and LoRA; ``--steps`` optimiser steps each, the first one
excluded from the time (allocator warm-up).

    python -m benchmarks.probes.ckpt_probe                  # SmolLM2-135M-Instruct, generation, finetune
    python -m benchmarks.probes.ckpt_probe --method crow --steps 3

Writes benchmarks/probes/ckpt_probe-<method>-<model>.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args: argparse.Namespace) -> None:
    """One training run; prints a JSON line with its peak memory, step times and LoRA weights' sum."""
    import torch

    from sanitizer.assets import dataset_path
    from sanitizer.data import load_dataset
    from sanitizer.defenses import METHODS
    from sanitizer.defenses.configs import validate_config
    from sanitizer.models import add_lora, load_model

    torch.set_num_threads(args.threads)
    rows = list(load_dataset(dataset_path("instructions", "train"), task="generation").rows)
    rows = rows[: args.batch_size * args.steps]
    lm = load_model(args.model, "generation", device="cpu")
    torch.manual_seed(0)  # the LoRA initialisation: the same in both children
    add_lora(lm, r=8, alpha=16, dropout=0.0, target="all-linear")
    hp = {
        "epochs": 1,
        "max_steps": args.steps,
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "eval_every_epoch": False,
        "gradient_checkpointing": args.ckpt == 1,
        "seed": 0,
    }
    if args.method == "w2sdefense":
        hp |= {"teacher_model": args.model}
    cfg_cls, run = METHODS[args.method]
    step_times: list[float] = []
    last = [time.monotonic()]

    def progress(event) -> None:
        if not event.message:  # a step, not an "epoch done" event
            now = time.monotonic()
            step_times.append(now - last[0])
            last[0] = now

    last[0] = time.monotonic()
    run(lm, rows, [], validate_config(cfg_cls, hp), progress=progress)
    lora = [p.detach().double() for n, p in lm.model.named_parameters() if "lora_" in n]
    print(
        json.dumps(
            {
                "gradient_checkpointing": args.ckpt == 1,
                "peak_rss_mb": round(_peak_rss_mb()),
                "step_seconds": [round(t, 2) for t in step_times],
                "lora_l1": float(sum(p.abs().sum() for p in lora)),
                "lora": [p.flatten()[:4096].tolist() for p in lora[:8]],
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=SMOL)
    ap.add_argument("--method", default="finetune", choices=["finetune", "crow", "w2sdefense"])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=160)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ckpt", type=int, choices=[0, 1], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ckpt is not None:
        child(args)
        return
    runs = []
    for ckpt in (0, 1):
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.probes.ckpt_probe",
            *sys.argv[1:],
            "--ckpt",
            str(ckpt),
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    plain, ckpt_run = runs
    diff = max(
        abs(a - b)
        for pa, pb in zip(plain.pop("lora"), ckpt_run.pop("lora"), strict=True)
        for a, b in zip(pa, pb, strict=True)
    )

    def sec(r: dict) -> float:
        times = r["step_seconds"][1:] or r["step_seconds"]
        return sum(times) / len(times)

    result = {
        "model": args.model,
        "method": args.method,
        "task": "generation",
        "batch_size": args.batch_size,
        "max_length": args.max_length,
        "steps": args.steps,
        "threads": args.threads,
        "runs": runs,
        "peak_rss_ratio": round(ckpt_run["peak_rss_mb"] / plain["peak_rss_mb"], 3),
        "seconds_per_step_ratio": round(sec(ckpt_run) / sec(plain), 3),
        "max_abs_lora_diff": diff,
    }
    out = (
        REPO
        / "benchmarks"
        / "probes"
        / f"ckpt_probe-{args.method}-{args.model.split('/')[-1]}.json"
    )
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
