#!/usr/bin/env bash
# One generation cell end to end on a CUDA machine (issue 21, item 5): installs, prepares the
# assets, runs rebuild and CROW on instructions-ctba-paired-smollm2 with bf16 autocast, and
# writes the result JSONs plus a summary (device, precision, per-step time, peak GPU memory)
# under $OUT. NOT VERIFIED YET: no session so far had a GPU to run it on.
#
#   OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
test -d .venv-gpu || python3 -m venv .venv-gpu
. .venv-gpu/bin/activate
pip install -q "torch<=2.14.1"          # the CUDA build from PyPI
pip install -q -e ".[dev]"
python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device: this script is for a GPU machine"
print("cuda:", torch.cuda.get_device_name(0), "bf16:", torch.cuda.is_bf16_supported())
PY
sanitizer assets
CELL=instructions-ctba-paired-smollm2
BENCH_THREADS=4 python benchmarks/run.py --cells "$CELL" --seeds 0 --methods rebuild,crow --tag=-gpu
cp benchmarks/results/"$CELL"/*-gpu-s0.json "$OUT"/
python - "$OUT" <<'PY'
import glob, json, sys
out = sys.argv[1]
rows = []
for f in sorted(glob.glob(f"{out}/*-gpu-s0.json")):
    r = json.load(open(f))
    rep = r["report"]
    rows.append({
        "method": r["method"],
        "device": rep.get("device"),
        "precision": rep.get("training", {}).get("precision"),
        "seconds_per_step": rep.get("training", {}).get("seconds_per_step"),
        "defense_s": rep.get("timings", {}).get("defense_s"),
        "peak_memory_mb": rep.get("peak_memory_mb"),
        "asr_after": rep.get("metrics", {}).get("after", {}).get("attack_success_rate"),
    })
json.dump(rows, open(f"{out}/summary.json", "w"), indent=1)
print(json.dumps(rows, indent=1))
PY
