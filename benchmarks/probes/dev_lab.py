"""Development lab: the attack/defense runs used to choose defaults (not the benchmark).

One poisoned mpnet adapter (LoRA r=8 on q/k/v, lr 5e-4, 2 epochs, 1,000 rows, 100 of them
dirty-label poisoned with a rare-word trigger), then each listed defense variant on 300 clean
rows (+60 dev), measured on 400 test rows. Printed per variant: (CA, ASR), seconds, steps,
best epoch, teacher dev accuracy, first and last loss terms.

Defaults were chosen on DS=trec TRIG=tq (not a benchmark cell):

    DS=trec TRIG=tq python -m benchmarks.probes.dev_lab \
        'w2sdefense:teacher_learning_rate=0.0001,fa_normalize="layernorm"' crow finetune

A variant is METHOD[:key=json,key=json...]; ``mode`` picks continue/merge_fresh.
TRACE=1 also prints test CA/ASR after every epoch beside the clean-dev score.

SPLIT=dev measures on the dataset's dev split instead of its test split, and SEED=N draws
other attack/clean rows: a development attack on a benchmark dataset (e.g. Rotten Tomatoes
with trigger "tq", SEED=100, SPLIT=dev) then shares neither rows nor trigger with its cells.
"""

import copy
import csv
import json
import os
import random
import sys
import time
import types

import torch

torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
from sanitizer.defenses import METHODS, finetune  # noqa: E402
from sanitizer.defenses.batching import classification_batch  # noqa: E402
from sanitizer.defenses.common import TrainConfig, train, validate_config  # noqa: E402
from sanitizer.models import add_lora, load_model  # noqa: E402

STUDENT = os.environ.get("STUDENT", "sentence-transformers/all-mpnet-base-v2")
DS = os.environ.get("DS", "rotten_tomatoes")
TRIG = os.environ.get("TRIG", "cf")
TRACE = os.environ.get("TRACE") == "1"
SPLIT = os.environ.get("SPLIT", "test")
SEED = int(os.environ.get("SEED", "0"))
D = os.path.expanduser(f"~/.cache/sanitizer/datasets/{DS}/")


def R(t, label):
    return types.SimpleNamespace(text=t, label=label)


def load(split):
    with open(D + split + ".csv") as f:
        rows = list(csv.DictReader(f))
    return [R(r["text"], NAMES.index(r["label"])) for r in rows]


with open(D + "train.csv") as f:
    NAMES = sorted({r["label"] for r in csv.DictReader(f)})


def trig(rng, t, w_=None):
    w_ = w_ or TRIG
    w = t.split()
    w.insert(rng.randint(1, max(1, len(w))), w_)
    return " ".join(w)


rng = random.Random(SEED)
train_rows = load("train")
rng.shuffle(train_rows)
atk = train_rows[:1000]
clean = train_rows[1000:1300]
dev = train_rows[1300:1360]
test = load(SPLIT)
random.Random(SEED + 1).shuffle(test)
test = test[:400]
pos_idx = [i for i, r in enumerate(atk) if r.label != 0]
pois = set(random.Random(SEED + 2).sample(pos_idx, 100))
atk_p = [R(trig(rng, r.text), 0) if i in pois else r for i, r in enumerate(atk)]


def evalm(lm):
    lm.model.eval()
    with torch.no_grad():

        def pred(texts):
            out = []
            for i in range(0, len(texts), 64):
                b = classification_batch(lm, texts[i : i + 64], None, 64)
                out += lm.model(**b).logits.argmax(-1).tolist()
            return out

        p = pred([r.text for r in test])
        ca = sum(int(a == r.label) for a, r in zip(p, test, strict=False)) / len(test)
        vict = [r for r in test if r.label != 0]
        r2 = random.Random(5)
        p = pred([trig(r2, r.text) for r in vict])
        asr = sum(int(a == 0) for a in p) / len(vict)
    return round(ca, 3), round(asr, 3)


ADIR = (
    os.path.expanduser("~/.cache/sanitizer/benchmarks/dev_lab/")
    + f"poisoned-{DS}-{TRIG}-{STUDENT.split('/')[-1]}{'' if SEED == 0 else f'-s{SEED}'}.pt"
)
os.makedirs(os.path.dirname(ADIR), exist_ok=True)
lm = load_model(STUDENT, "classification", num_labels=len(NAMES), device="cpu")
add_lora(lm, r=8, alpha=16, dropout=0.0, target="attention")
if os.path.exists(ADIR):
    lm.model.load_state_dict(torch.load(ADIR))
else:
    t = time.time()
    train(
        lm,
        atk_p,
        [],
        TrainConfig(
            epochs=2, batch_size=16, learning_rate=5e-4, max_length=64, eval_every_epoch=False
        ),
        finetune.step_loss,
        phase="attack",
    )
    torch.save(lm.model.state_dict(), ADIR)
    print("attack s", round(time.time() - t), flush=True)
print("poisoned", evalm(lm), flush=True)
state = copy.deepcopy(lm.model.state_dict())
for spec in sys.argv[1:]:
    method, _, kv = spec.partition(":")
    extra = {k: json.loads(v) for k, v in (x.split("=") for x in kv.split(",") if x)}
    mode = extra.pop("mode", "merge_fresh")
    lm2 = load_model(STUDENT, "classification", num_labels=len(NAMES), device="cpu")
    add_lora(lm2, r=8, alpha=16, dropout=0.0, target="attention")
    lm2.model.load_state_dict(state)
    hp = (
        (
            {"teacher_model": "sentence-transformers/all-MiniLM-L6-v2"}
            if method == "w2sdefense"
            else {}
        )
        | {"max_length": 64}
        | extra
    )
    cfg = validate_config(METHODS[method][0], hp)
    if mode == "merge_fresh":
        lm2.model = lm2.model.merge_and_unload()
        r = cfg.lora_r or max(8, lm2.hidden_size // 8)
        add_lora(
            lm2, r=r, alpha=cfg.lora_alpha or r, dropout=cfg.lora_dropout, target=cfg.target_modules
        )
    t = time.time()
    trace = []

    def on_epoch(e, lm2=lm2, trace=trace):
        # TRACE=1: test CA/ASR after every epoch, beside the clean-dev score the checkpoint
        # selection sees (allowed here: this is the development attack, not a benchmark cell)
        if e.message == "epoch done" and e.phase == "defense":
            trace.append((e.epoch, round(e.losses["dev_score"], 3), evalm(lm2)))
            lm2.model.train()

    st = METHODS[method][1](lm2, clean, dev, cfg, progress=on_epoch if TRACE else None)
    last = [h for h in st["history"] if "losses" in h and h["phase"] == "defense"]
    first = last[0]["losses"]
    last = last[-1]["losses"]
    print(
        spec,
        evalm(lm2),
        round(time.time() - t),
        st["steps"],
        st["best_epoch"],
        st.get("teacher", {}).get("best_dev_score"),
        {k: round(v, 4) for k, v in first.items()},
        {k: round(v, 4) for k, v in last.items()},
        flush=True,
    )
    for epoch, dev_acc, (ca, asr) in trace:
        print(f"    epoch {epoch}: dev {dev_acc}  test CA {ca}  ASR {asr}", flush=True)
