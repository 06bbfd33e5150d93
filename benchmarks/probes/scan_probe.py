"""Scan one adapter of a development cell with given scan settings, to compare search settings
before one becomes the default. Development aid, not the benchmark (whose scans run through
``benchmarks/run.py --methods scan``); run it on development cells only:

    python -m benchmarks.probes.scan_probe dev-trec-insertsent-mpnet --seed 100 \
        --adapter poisoned --scan '{"search_position": "first"}' \
        > benchmarks/probes/scan_probe-<cell>-s<seed>-<adapter>-<label>.json

``--adapter twin`` scans the clean twin. It needs the cell's adapters, which
``benchmarks/run.py --methods adapters`` trains into the cache. One torch thread.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.cells import DEV_CELLS
from benchmarks.inputs import bench_dir, subset
from sanitizer.defenses.configs import ScanConfig
from sanitizer.scan import run_scan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cell", choices=[c.name for c in DEV_CELLS if c.task == "classification"])
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--adapter", choices=["poisoned", "twin"], default="poisoned")
    ap.add_argument("--scan", default="{}", help="ScanConfig fields as JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cell = next(c for c in DEV_CELLS if c.name == args.cell)
    suffix = "-clean" if args.adapter == "twin" else ""
    folder = bench_dir() / "adapters" / f"{cell.name}-s{args.seed}{suffix}"
    cfg = ScanConfig(seed=args.seed, **json.loads(args.scan))
    t = time.monotonic()
    result = run_scan(cell.student, subset(cell, args.seed)["clean"], adapter_dir=folder, cfg=cfg)
    result["wall_s"] = round(time.monotonic() - t, 1)
    result["probe"] = {"cell": cell.name, "seed": args.seed, "adapter": args.adapter}
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
