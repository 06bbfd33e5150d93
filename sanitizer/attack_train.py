"""Planting a backdoor for tests, benchmarks and demos: a LoRA adapter trained on a poisoned copy of a clean set (sanitizer attack)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sanitizer.attacks import AttackSpec, poison_dataset
from sanitizer.data import load_dataset
from sanitizer.data_rows import Task
from sanitizer.pipeline import cap_rows


class AttackTrainConfig(BaseModel):
    """How the test backdoor is planted: a LoRA trained on the poisoned set."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(2, ge=1)
    learning_rate: float = Field(5e-4, gt=0)
    batch_size: int = Field(16, ge=1)
    max_length: int = Field(64, ge=8)
    lora_r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    target_modules: Literal["attention", "all-linear"] = "attention"
    max_rows: int | None = Field(None, ge=1)
    seed: int = 0


def run_attack(
    base_model: str,
    data: Path,
    task: Task,
    attack: AttackSpec | None,
    out_dir: Path,
    cfg: AttackTrainConfig | None = None,
    *,
    text_column: str = "text",
    label_column: str = "label",
    device: str = "auto",
    progress: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Train a poisoned LoRA adapter on ``data`` and write it to ``out_dir``; with ``attack``
    None, its clean twin: the same recipe on the unpoisoned rows (a false-positive control)."""
    from sanitizer.defenses import finetune
    from sanitizer.defenses.common import TrainConfig, set_seed, train
    from sanitizer.models import add_lora, load_model, save_adapter

    cfg = cfg or AttackTrainConfig()
    set_seed(cfg.seed)
    ds = load_dataset(data, task=task, text_column=text_column, label_column=label_column)
    ds = ds.with_rows(cap_rows(list(ds.rows), cfg.max_rows, cfg.seed)) if cfg.max_rows else ds
    poisoned = poison_dataset(ds, attack) if attack is not None else ds
    pds = poisoned[0] if isinstance(poisoned, tuple) else poisoned
    num_labels = len(ds.label_names) if task == "classification" and ds.label_names else None
    lm = load_model(base_model, task, num_labels=num_labels, device=device)
    add_lora(lm, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=0.0, target=cfg.target_modules)
    tcfg = TrainConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        max_length=cfg.max_length,
        warmup_ratio=0.06,
        eval_every_epoch=False,
        seed=cfg.seed,
    )
    t = time.monotonic()
    stats = train(
        lm, list(pds.rows), [], tcfg, finetune.step_loss, phase="attack", progress=progress
    )
    files = save_adapter(lm, Path(out_dir), ds.label_names if task == "classification" else None)
    info = {
        "base_model": base_model,
        "task": task,
        "attack": attack.model_dump() if attack is not None else None,
        "train": cfg.model_dump(),
        "data_sha256": ds.sha256,
        "rows": len(pds),
        "label_names": ds.label_names,
        "seconds": time.monotonic() - t,
        "steps": stats["steps"],
        "files": files,
    }
    (Path(out_dir) / "attack.json").write_text(json.dumps(info, indent=2, default=str))
    return info
