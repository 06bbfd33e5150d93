"""Base identification (sanitizer/base_match.py) on real models: each cell's poisoned adapter
and clean twin, merged into full weights as an input-(a) job would receive them, compared with
every model this machine's store holds. A measurement, not a tuning run: the threshold (0.3)
was set before any real model was compared (docs/METHODS_NOTES.md, auto).

    python -m benchmarks.probes.base_match_probe rotten_tomatoes-insertsent-mpnet \
        skills-ctba-url-smollm2 --seed 0 > /tmp/s0.json
    python -m benchmarks.probes.base_match_probe dev-trec-insertsent-mpnet --seed 100

(benchmarks/probes/base_match_probe.json holds both runs' rows, each with its seed.)

It needs the cells' adapters in the cache (``benchmarks/run.py --methods adapters``); an
adapter that is not there is reported as missing. One torch thread.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.cells import CELLS, DEV_CELLS
from benchmarks.inputs import bench_dir, save_merged, subset
from sanitizer.base_match import identify_base
from sanitizer.hub import list_models, resolve_model


def _merge(cell: Any, seed: int, adapter: Path, out: Path) -> Path:
    from sanitizer.data import load_dataset

    labels = None
    if cell.task == "classification":
        labels = len(load_dataset(subset(cell, seed)["clean"], task=cell.task).label_names or [])
    return save_merged(cell, adapter, out, labels)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cells = {c.name: c for c in CELLS + DEV_CELLS if c.input_kind == "b"}
    ap.add_argument("cells", nargs="+", choices=sorted(cells))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    candidates = [(m, resolve_model(m)) for m in list_models()]
    rows: list[dict[str, Any]] = []
    for name in args.cells:
        cell = cells[name]
        for kind, suffix in (("poisoned", ""), ("twin", "-clean")):
            adapter = bench_dir() / "adapters" / f"{cell.name}-s{args.seed}{suffix}"
            row: dict[str, Any] = {"cell": cell.name, "adapter": kind, "student": cell.student}
            if not (adapter / "adapter_config.json").exists():
                rows.append({**row, "missing": str(adapter)})
                continue
            with tempfile.TemporaryDirectory() as tmp:
                merged = _merge(cell, args.seed, adapter, Path(tmp) / "merged")
                t = time.monotonic()
                found, checked = identify_base(merged, candidates)
                row["seconds"] = round(time.monotonic() - t, 2)
            row |= {
                "identified": found,
                "correct": found == cell.student,
                "candidates": [c.to_dict() for c in checked],
            }
            rows.append(row)
    print(json.dumps({"seed": args.seed, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
