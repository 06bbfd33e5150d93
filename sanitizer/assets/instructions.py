"""The instruction set for the generation benchmark: prompts built from the datasets and
answered once by the bundled chat model (resumable, written with its manifest last)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sanitizer.assets.common import (
    DATASET_MANIFEST,
    DEV_FRACTION,
    GEN_BATCH_SIZE,
    GENERATOR_MODEL,
    INSTRUCTION_COUNTS,
    INSTRUCTIONS,
    MAX_NEW_TOKENS,
    MODEL_MANIFEST,
    RT_TEMPLATE,
    SCHEMA_VERSION,
    SPLIT_SEED,
    SPLITS,
    TEST_FRACTION,
    TREC_TEMPLATE,
    Log,
    _now,
    _read_json,
    _write_json,
    file_entry,
    is_done,
)
from sanitizer.assets.datasets import (
    Row,
    datasets_dir,
    prepare_classification_dataset,
    read_csv,
    stratified_split,
    write_jsonl,
)
from sanitizer.assets.models import (
    _model_dir,
    prepare_model,
)


def instruction_prompts(
    trec_rows: Sequence[Row], rt_rows: Sequence[Row], seed: int = SPLIT_SEED,
    counts: dict[str, int] = INSTRUCTION_COUNTS,
) -> list[dict[str, str]]:  # fmt: skip
    """Seeded choice of TREC questions and Rotten Tomatoes snippets turned into instructions.

    Each item: id, source, instruction (the whole user message), input ("" - kept for the
    instruction/input/output format).
    """
    rng = random.Random(seed)
    items: list[dict[str, str]] = []
    for source, rows, template in (
        ("trec", trec_rows, TREC_TEMPLATE),
        ("rotten_tomatoes", rt_rows, RT_TEMPLATE),
    ):
        texts = sorted({t for t, _ in rows})
        chosen = rng.sample(texts, min(counts[source], len(texts)))
        for text in chosen:
            key = hashlib.sha256(f"{source}\n{text}".encode()).hexdigest()[:16]
            items.append(
                {
                    "id": key,
                    "source": source,
                    "instruction": template.format(text=text),
                    "input": "",
                }
            )
    return items


def trim_output(text: str, finished: bool) -> str:
    """Clean a generated answer; if generation stopped at the token limit, cut back to the
    last full sentence when there is one."""
    text = text.strip()
    if not finished:
        cut = max(text.rfind(". "), text.rfind("! "), text.rfind("? "))
        if text.endswith((".", "!", "?")):
            pass
        elif cut > 0:
            text = text[: cut + 1]
    return text


def generation_threads() -> int:
    """Torch threads for generation: the idle cores (at least 1).

    On a shared machine, asking for more threads than there are idle cores makes every
    op wait for the slowest thread; here that made generation >10x slower.
    """
    if env := os.environ.get("SANITIZER_THREADS"):
        return max(1, int(env))
    cores = os.cpu_count() or 1
    try:
        busy = round(os.getloadavg()[0])
    except OSError:
        busy = 0
    return max(1, min(cores, cores - busy))


def _read_partial(path: Path) -> dict[str, dict[str, Any]]:
    """Generated answers so far, by id; a line cut off by a killed run is ignored."""
    done: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            done[rec["id"]] = rec
    return done


def _generate(items: list[dict[str, str]], partial: Path, log: Log) -> None:
    """Greedy answers from the clean SmolLM2, appended to ``partial`` batch by batch (resumable)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    done = set(_read_partial(partial))
    todo = [it for it in items if it["id"] not in done]
    if not todo:
        return
    torch.manual_seed(0)
    torch.set_num_threads(generation_threads())
    model_dir = _model_dir(GENERATOR_MODEL)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    log(
        f"generating {len(todo)} answers with {GENERATOR_MODEL} ({len(done)} already done, "
        f"{torch.get_num_threads()} threads)"
    )
    # sort by length so batches pad little; order does not affect greedy outputs
    todo.sort(key=lambda it: len(it["instruction"]))
    with (
        open(partial, "a", encoding="utf-8") as out,
        tqdm(total=len(todo), desc="instructions", unit="ex") as bar,
    ):
        for i in range(0, len(todo), GEN_BATCH_SIZE):
            batch = todo[i : i + GEN_BATCH_SIZE]
            prompts = [
                tok.apply_chat_template(
                    [{"role": "user", "content": it["instruction"]}],
                    tokenize=False,
                    add_generation_prompt=True,
                )
                for it in batch
            ]
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad():
                gen = model.generate(
                    **enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                    pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                )  # fmt: skip
            new = gen[:, enc["input_ids"].shape[1] :]
            for it, ids in zip(batch, new, strict=True):
                finished = bool((ids == tok.eos_token_id).any())
                text = trim_output(str(tok.decode(ids, skip_special_tokens=True)), finished)
                out.write(
                    json.dumps({**it, "output": text, "finished": finished}, ensure_ascii=False)
                    + "\n"
                )
            out.flush()
            bar.update(len(batch))


def prepare_instructions(*, force: bool = False, log: Log = print) -> dict[str, Any]:
    out = datasets_dir() / INSTRUCTIONS
    if not force and is_done(out, DATASET_MANIFEST):
        log(f"{INSTRUCTIONS}: ready (skipped)")
        return _read_json(out / DATASET_MANIFEST) or {}
    # dependencies: never forced from here
    prepare_model(GENERATOR_MODEL, log=log)
    for dep in ("trec", "rotten_tomatoes"):
        prepare_classification_dataset(dep, log=log)
    out.mkdir(parents=True, exist_ok=True)
    (out / DATASET_MANIFEST).unlink(missing_ok=True)
    partial, recipe_file = out / "generated.partial.jsonl", out / "generation_recipe.json"
    model_manifest = _read_json(_model_dir(GENERATOR_MODEL) / MODEL_MANIFEST) or {}
    recipe = {
        "model": GENERATOR_MODEL,
        "model_weights_sha256": model_manifest.get("weights_sha256"),
        "decoding": {"do_sample": False, "max_new_tokens": MAX_NEW_TOKENS},
        "prompt": "tokenizer chat template, one user message = instruction (+ '\\n\\n' + input if any); "
        "the template adds SmolLM2's default system message",
        "templates": {"trec": TREC_TEMPLATE, "rotten_tomatoes": RT_TEMPLATE},
        "counts": INSTRUCTION_COUNTS,
        "seed": SPLIT_SEED,
    }
    if force or _read_json(recipe_file) != recipe:
        partial.unlink(missing_ok=True)  # outputs of another recipe must not be mixed in
        _write_json(recipe_file, recipe)
    items = instruction_prompts(
        read_csv(datasets_dir() / "trec" / "full.csv"),
        read_csv(datasets_dir() / "rotten_tomatoes" / "full.csv"),
    )
    start = time.monotonic()
    _generate(items, partial, log)
    generated = _read_partial(partial)
    records = [generated[it["id"]] for it in items if generated.get(it["id"], {}).get("output")]
    dropped_empty = len(items) - len(records)
    splits = stratified_split(records, label_of=lambda r: r["source"])
    files, sizes = [], {}
    for split in SPLITS:
        path = out / f"{split}.jsonl"
        write_jsonl(
            path, ({k: r[k] for k in ("instruction", "input", "output")} for r in splits[split])
        )
        files.append(file_entry(path, out))
        sizes[split] = {
            "rows": len(splits[split]),
            "sources": dict(sorted(Counter(r["source"] for r in splits[split]).items())),
        }
    files.append(file_entry(partial, out))
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "name": INSTRUCTIONS,
        "task": "generation",
        "columns": {"instruction": "instruction", "input": "input", "output": "output"},
        "source": {
            "how": "instructions from TREC questions and Rotten Tomatoes snippets; outputs generated "
            "greedily by the clean SmolLM2-135M-Instruct (no Alpaca offline)",
            "datasets": {
                d: (_read_json(datasets_dir() / d / DATASET_MANIFEST) or {}).get("source")
                for d in ("trec", "rotten_tomatoes")
            },
            "generation": recipe,
        },
        "cleaning": {
            "dropped_empty_output": dropped_empty,
            "hit_token_limit": sum(1 for r in records if not r.get("finished", True)),
        },
        "split": {
            "seed": SPLIT_SEED,
            "dev_fraction": DEV_FRACTION,
            "test_fraction": TEST_FRACTION,
            "stratified_by": "source",
        },
        "sizes": sizes,
        "files": files,
        "generation_seconds_this_run": round(time.monotonic() - start, 1),
        "prepared_at": _now(),
    }
    _write_json(out / DATASET_MANIFEST, manifest)
    summary = ", ".join(f"{s} {sizes[s]['rows']}" for s in SPLITS)
    log(f"{INSTRUCTIONS}: prepared ({summary})")
    return manifest
