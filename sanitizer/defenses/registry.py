"""The one list of methods. Torch-free: the API, the CLI, the pipeline and the benchmark all
read it, and the run functions are imported only when a job runs.

Adding a method: its config class (``configs.py``, torch-free), its module with a ``run``
function (``sanitizer/defenses/<name>.py``), and one ``register(...)`` line below.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sanitizer.defenses.configs import (
    BeearConfig,
    CrowConfig,
    FinetuneConfig,
    RebuildConfig,
    TrainConfig,
    UnlearnConfig,
    W2SConfig,
    validate_config,
)
from sanitizer.errors import ConfigError

AUTO = "auto"


@dataclass(frozen=True)
class MethodSpec:
    name: str
    config: type[TrainConfig]
    entry: str  # "module:function", imported on first use (torch)
    summary: str
    # where the method starts: "merged" = the uploaded adapter merged into the base (or kept
    # trainable, adapter_mode=continue) and a LoRA on top; "uploaded" = the model as uploaded,
    # unmerged: the method takes what it needs from it and trains on the trusted base itself
    start: Literal["merged", "uploaded"] = "merged"
    needs_trusted_base: bool = False

    def runner(self) -> Callable[..., dict[str, Any]]:
        module, func = self.entry.split(":")
        return getattr(importlib.import_module(module), func)


REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in REGISTRY or spec.name == AUTO:
        raise ValueError(f"method '{spec.name}' is registered already")
    REGISTRY[spec.name] = spec
    return spec


register(
    MethodSpec(
        "finetune",
        FinetuneConfig,
        "sanitizer.defenses.finetune:run",
        "plain LoRA fine-tuning on the clean set (the control)",
    )
)
register(
    MethodSpec(
        "w2sdefense",
        W2SConfig,
        "sanitizer.defenses.w2sdefense:run",
        "a small clean teacher guides the student's LoRA (feature-alignment KD)",
    )
)
register(
    MethodSpec(
        "crow",
        CrowConfig,
        "sanitizer.defenses.crow:run",
        "LoRA with a layer-consistency regulariser under embedding perturbation",
    )
)
register(
    MethodSpec(
        "rebuild",
        RebuildConfig,
        "sanitizer.defenses.rebuild:run",
        "a fresh LoRA on the trusted base, distilled from the uploaded model on clean inputs only",
        start="uploaded",
        needs_trusted_base=True,
    )
)
register(
    MethodSpec(
        "unlearn",
        UnlearnConfig,
        "sanitizer.defenses.unlearn:run",
        "scan for short triggers with no trigger knowledge, then train the found ones away "
        "(classification)",
    )
)

register(
    MethodSpec(
        "beear",
        BeearConfig,
        "sanitizer.defenses.beear:run",
        "comparator after BEEAR: LoRA trained to answer correctly under universal hidden-state "
        "perturbations driven towards unwanted behaviours (no trigger knowledge)",
    )
)


def method_names(include_auto: bool = False) -> tuple[str, ...]:
    return (*REGISTRY, *((AUTO,) if include_auto else ()))


def get(name: str) -> MethodSpec:
    if name not in REGISTRY:
        raise ConfigError(
            f"unknown method '{name}'", hint=f"use one of {', '.join(method_names(True))}"
        )
    return REGISTRY[name]


def resolve(
    name: str,
    *,
    task: str,
    has_adapter: bool,
    trusted_base: bool = False,
    identified_base: str | None = None,
) -> tuple[str, str | None]:
    """The method a job runs, and (for ``auto``) why it was chosen. Chosen on development cells
    only (docs/METHODS_NOTES.md, auto); never on benchmark cells. ``trusted_base``: the job
    names the base a full-weights model was fine-tuned from (rebuild's ``trusted_base``);
    ``identified_base``: the service found, from the weights, which of its own models a
    full-weights upload was fine-tuned from (sanitizer/base_match.py)."""
    if name != AUTO:
        spec = get(name)
        if spec.needs_trusted_base and not has_adapter and not trusted_base:
            raise ConfigError(
                f"method '{name}' rebuilds on a trusted base model, and this job has none: the "
                "model was given as full weights",
                hint="name the base it was fine-tuned from (hyperparameter trusted_base=<model "
                "id>), give the base model id and the fine-tune as a PEFT adapter file, or choose "
                f"another method ({', '.join(n for n in REGISTRY if not REGISTRY[n].needs_trusted_base)})",
            )
        return name, None
    if has_adapter:
        return "rebuild", (
            "auto: the job names a base model and uploads an adapter, so the base is trusted; "
            "rebuild trains a fresh LoRA on it from the clean rows and the uploaded model's "
            "answers on clean inputs, which carry no trigger (best on the development cells)"
        )
    if identified_base:
        return "rebuild", (
            f"auto: the full weights were fine-tuned from '{identified_base}', a model this "
            "service holds (the upload's token embeddings are that model's, as a fine-tune leaves them), so that model "
            "is the trusted base; rebuild trains a fresh LoRA on it from the clean rows and the "
            "uploaded model's answers on clean inputs (as for an adapter job)"
        )
    if trusted_base:
        return "rebuild", (
            "auto: the job names the base model the full weights were fine-tuned from "
            "(trusted_base), so that model is trusted; rebuild trains a fresh LoRA on it from the "
            "clean rows and the uploaded model's answers on clean inputs (as for an adapter job)"
        )
    if task == "classification":
        return "unlearn", (
            "auto: no trusted base (the model was given as full weights and its base is not one "
            "of this service's models), so nothing clean can be rebuilt on; unlearn scans the "
            "model for a trigger (no trigger knowledge) and trains what it finds away "
            "(dev-trec-insertsent-mpnet-merged: flip rate 99.3% -> 26.1% at CA +0.25, where CROW leaves 51.9%)"
        )
    return "crow", (
        "auto: no trusted base (the model was given as full weights and its base is not one of "
        "this service's models), so the defense trains on top of it; CROW, the better of the two "
        "published defenses on the development cells (a chat model's scan is not yet measured "
        "on a real model, so unlearn is not chosen for generation)"
    )


def auto_choice(*, has_adapter: bool, trusted_base: bool) -> str | None:
    """What ``auto`` runs when that is known before the job runs: rebuild for an adapter job
    (its base is trusted) or a job that names the base its full weights came from
    (``trusted_base``). None for other full weights: the worker looks for the base among its
    own models (rebuild when found; otherwise unlearn on classification, CROW on
    generation)."""
    return "rebuild" if has_adapter or trusted_base else None


CONFIGS: dict[str, type[TrainConfig]] = {n: s.config for n, s in REGISTRY.items()}


def config_for(
    method: str, values: dict[str, Any] | None = None, *, has_adapter: bool = False
) -> TrainConfig:
    """The validated config of ``method``; ConfigError names the method or every bad field.
    ``auto`` is validated as the method it will run when that is known already (an adapter
    job, or ``trusted_base`` named: rebuild, so rebuild's own settings such as ``scan_first``
    are accepted), else as the fields every method shares (chosen when the job runs)."""
    if method == AUTO:
        named = bool((values or {}).get("trusted_base"))
        chosen = auto_choice(has_adapter=has_adapter, trusted_base=named)
        return validate_config(get(chosen).config if chosen else TrainConfig, values)
    return validate_config(get(method).config, values)
