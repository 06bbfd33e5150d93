"""Jobs that measure a model without defending it: sanitizer evaluate, and the zero-training comparators (prune, int8, int4) measured on the uploaded model, alone or beside a defense."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sanitizer.attacks import AttackSpec
from sanitizer.data import load_dataset
from sanitizer.data_rows import Task
from sanitizer.errors import ConfigError, InputError
from sanitizer.jobspec import JobSpec
from sanitizer.metrics import METRIC_DEFINITIONS
from sanitizer.pipeline import (
    cap_rows,
    eval_kwargs,
    load_base,
    load_job_data,
    measure,
)
from sanitizer.runtime import peak_memory_mb, reset_peak_memory, versions


def run_comparators(
    spec: JobSpec,
    num_labels: int | None,
    test_rows: list[Any],
    eval_kw: dict[str, Any],
    emit: Callable[[Any], None] = lambda e: None,
    include_unedited: bool = False,
) -> dict[str, Any]:
    """Each of ``spec.comparators`` applied to the model as uploaded (base + adapter merged),
    measured on the test rows like the defense, then undone (docs/METHODS_NOTES.md, zero-training comparators). With
    ``include_unedited`` the unedited model's metrics come first, under ``none``."""
    from sanitizer.comparators import applied
    from sanitizer.defenses.common import ProgressEvent
    from sanitizer.defenses.configs import COMPARATORS
    from sanitizer.models import load_adapter

    lm = load_base(spec, num_labels)
    if spec.adapter_dir is not None:
        load_adapter(lm, spec.adapter_dir, "merge_fresh")
    results: dict[str, Any] = {}
    if include_unedited:
        results["none"] = measure(lm, test_rows, spec, eval_kw)[0]
    for i, name in enumerate(spec.comparators):
        emit(
            ProgressEvent(
                "comparators",
                step=i,
                total_steps=len(spec.comparators),
                message=f"measuring the {name} comparator",
            )
        )
        t = time.monotonic()
        with applied(lm.model, name):
            after, per_attack = measure(lm, test_rows, spec, eval_kw)
        results[name] = {
            "description": COMPARATORS[name],
            "metrics": {"after": after, "per_attack": per_attack},
            "timings": {"evaluate_s": time.monotonic() - t},
        }
    return results


def run_comparator_job(
    spec: JobSpec, progress: Callable[[Any], None] | None = None
) -> dict[str, Any]:
    """The comparators alone, no defense: the model as uploaded measured as is (``before``)
    and after each edit (``comparators``). The benchmark's prune/int8/int4 rows."""
    from sanitizer.defenses.common import set_seed, validate_config
    from sanitizer.defenses.configs import TrainConfig
    from sanitizer.models import select_device

    if not spec.comparators:
        raise ConfigError("no comparators asked for", hint="name at least one of prune, int8, int4")
    t0 = time.monotonic()
    reset_peak_memory()
    set_seed(spec.seed)
    shared = {k: v for k, v in spec.hyperparameters.items() if k in TrainConfig.model_fields}
    data = load_job_data(spec)
    results = run_comparators(
        spec,
        data.num_labels,
        data.test_rows,
        eval_kwargs(spec, validate_config(TrainConfig, shared)),
        progress or (lambda e: None),
        include_unedited=True,
    )
    return {
        "task": spec.task,
        "datasets": {"test": data.test_info},
        "before": results.pop("none"),
        "comparators": results,
        "timings": {"total_s": time.monotonic() - t0},
        "peak_memory_mb": round(peak_memory_mb(select_device(spec.device)), 1),
        "versions": versions(),
    }


def run_evaluate(
    base_model: str,
    test_data: Path,
    task: Task,
    attack: AttackSpec | None,
    *,
    adapter_dir: Path | None = None,
    text_column: str = "text",
    label_column: str = "label",
    label_names: list[str] | None = None,
    max_rows: int | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: Callable[[Any], None] | None = None,
    max_length: int | None = None,
) -> dict[str, Any]:
    """CA and ASR (classification) or utility, ASR and false-trigger rate (generation);
    ``progress`` gets an ``evaluate`` event per batch. ``max_length``: a classifier's input
    length in tokens (a job evaluates at its ``max_length`` hyperparameter; default 128)."""
    from sanitizer.evaluate import evaluate
    from sanitizer.models import attach_adapter, load_model

    ds = load_dataset(
        test_data,
        task=task,
        text_column=text_column,
        label_column=label_column,
        label_names=label_names,
    )
    num_labels = len(ds.label_names) if task == "classification" and ds.label_names else None
    lm = load_model(base_model, task, num_labels=num_labels, device=device)
    if adapter_dir is not None:
        attach_adapter(lm, adapter_dir)  # the model as given; nothing here trains it
    rows = cap_rows(list(ds.rows), max_rows, seed)
    if not rows:
        raise InputError("the test set is empty", hint="give a test file with at least one row")
    kw = {"max_length": max_length} if max_length and task == "classification" else {}
    result = evaluate(lm, rows, attack, progress=progress, **kw)
    result.update(
        {
            "base_model": base_model,
            "adapter": str(adapter_dir) if adapter_dir else None,
            "test_sha256": ds.sha256,
            "prompt_template": lm.template.to_dict(),
            "definitions": METRIC_DEFINITIONS,
        }
    )
    return result
