"""The typed job spec: built once from an API request, CLI flags or a benchmark cell, validated once, stored validated, read back by the worker. Torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sanitizer.attacks import AttackSpec
from sanitizer.data_rows import Task
from sanitizer.defenses import registry
from sanitizer.defenses.configs import Comparator


class JobSpec(BaseModel):
    """Everything a sanitization job needs. Paths are local (the service extracts uploads)."""

    model_config = ConfigDict(extra="forbid")

    method: str = Field(description="a registered method (sanitizer.defenses.registry) or 'auto'")
    task: Task = "classification"
    base_model: str
    base_revision: str | None = None
    adapter_dir: Path | None = None
    clean_data: Path
    test_data: Path | None = None
    unlabeled_data: Path | None = Field(
        None,
        description="classification rebuild: unlabeled in-domain texts (a text column; labels "
        "ignored) on which the uploaded model's logits are distilled as well, to reach past a "
        "small clean set",
    )
    text_column: str = "text"
    label_column: str = "label"
    label_names: list[str] | None = None
    attack: AttackSpec | None = None
    extra_attacks: list[AttackSpec] = Field(
        default_factory=list,
        max_length=8,
        description="more triggers to measure ASR on before and after (per-attack breakdown)",
    )
    baseline: bool = Field(
        False,
        description="also run plain fine-tuning (same LoRA, data, epochs) from the same start "
        "and report it beside the defense; roughly doubles the job's time",
    )
    comparators: list[Comparator] = Field(
        default_factory=list,
        description="zero-training comparators measured on the model as uploaded (adapter "
        "merged) and reported beside the defense: prune (magnitude, 35%), int8, int4 "
        "(weight-only rounding); one test-set evaluation each",
    )
    scan_after: bool = Field(
        False,
        description="scan the sanitized model for a remaining backdoor (no "
        "trigger knowledge) and put the verdict in the report's `scan`",
    )
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    dev_fraction: float = Field(0.15, ge=0.0, lt=0.9)
    max_test_rows: int | None = Field(None, ge=1)
    seed: int = 0
    device: str = "auto"

    @classmethod
    def from_request(cls, request: dict[str, Any], **fields: Any) -> JobSpec:
        """The spec of a job request as the service stores it (the API's ``JobCreate``,
        dumped): the one mapping from the request's shape to the library's, so no caller
        copies it field by field. ``fields`` (the local input paths, the device) win."""
        ev = request.get("evaluation") or {}
        return cls(
            **{
                "method": request.get("method", "auto"),
                "task": request.get("task", "classification"),
                "base_model": request["base_model"],
                "base_revision": request.get("base_revision"),
                "text_column": request.get("text_column", "text"),
                "label_column": request.get("label_column", "label"),
                "attack": ev.get("attack"),
                "extra_attacks": ev.get("extra_attacks") or [],
                "max_test_rows": ev.get("max_test_rows"),
                "baseline": bool(ev.get("baseline")),
                "comparators": ev.get("comparators") or [],
                "scan_after": bool(ev.get("scan")),
                "hyperparameters": request.get("hyperparameters") or {},
                "seed": request.get("seed", 0),
                **fields,
            }
        )

    @field_validator("method")
    @classmethod
    def _known_method(cls, v: str) -> str:
        if v not in registry.method_names(include_auto=True):
            raise ValueError(
                f"unknown method '{v}': use one of {', '.join(registry.method_names(True))}"
            )
        return v
