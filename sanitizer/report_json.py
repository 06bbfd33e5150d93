"""The sanitize job's report.json: the metrics block, the report's fields (schema version 1,
described in docs/ARCHITECTURE.md) and its atomic write. Torch-free."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sanitizer.jobspec import JobSpec
from sanitizer.metrics import METRIC_DEFINITIONS, der
from sanitizer.runtime import versions


def sanity_warnings(before: dict[str, Any]) -> list[str]:
    """What makes the 'before' numbers unfit to judge a defense by: a model that answers one
    label for (nearly) everything, or a trigger that changes few answers."""
    warnings = []
    share = before.get("majority_prediction_share")
    if share is not None and share >= 0.98:
        warnings.append(
            f"before the defense the model gives one label for {share:.0%} of the clean test "
            "rows: it is barely a classifier, and its ASR says nothing about a backdoor"
        )
    asr, ftr = before.get("attack_success_rate"), before.get("false_trigger_rate")
    if asr is not None and ftr is not None and asr - ftr < 0.25:
        warnings.append(
            f"before the defense the trigger moves few answers (ASR {asr:.1%}, {ftr:.1%} "
            "without the trigger): the model may not carry this backdoor"
        )
    return warnings


def metrics_block(
    spec: JobSpec,
    before: dict[str, Any],
    after: dict[str, Any],
    per_attack_before: dict[str, Any] | None,
    per_attack_after: dict[str, Any],
) -> dict[str, Any]:
    """Before, after, per attack, DER, the definitions and the sanity warnings."""
    block: dict[str, Any] = {
        "before": before,
        "after": after,
        "definitions": METRIC_DEFINITIONS,
    }
    block["warnings"] = sanity_warnings(before)
    if per_attack_before:
        block["per_attack"] = {
            k: {"before": per_attack_before[k], "after": per_attack_after[k]}
            for k in per_attack_before
        }
    if spec.task == "classification" and "attack_success_rate" in before:
        block["der"] = der(
            before["attack_success_rate"],
            after["attack_success_rate"],
            before["clean_accuracy"],
            after["clean_accuracy"],
        )
    return block


def build_report(
    spec: JobSpec,
    chosen: tuple[str, str | None],
    data: Any,
    cfg: Any,
    stats: dict[str, Any],
    timings: dict[str, float],
    model_facts: dict[str, Any],
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """The report's fields; ``chosen`` is the method run and why (``registry.resolve``)."""
    method, method_reason = chosen
    clean, train_ds, dev_ds, label_names = data.clean, data.train, data.dev, data.label_names
    report: dict[str, Any] = {
        "schema_version": 1,
        "method": method,
        "method_requested": spec.method,
        "method_reason": method_reason,
        "task": spec.task,
        "base_model": {
            "id": spec.base_model,
            "revision": spec.base_revision,
            "sha256": model_facts["base_sha256"],
        },
        "adapter_in": model_facts["adapter_in"],
        "datasets": {
            "clean": {
                "sha256": clean.sha256,
                "rows": len(clean),
                "train_rows": len(train_ds),
                "dev_rows": len(dev_ds),
            },
            "test": data.test_info,
            **({"unlabeled": data.unlabeled_info} if data.unlabeled_info else {}),
        },
        "label_names": label_names,
        "attack": spec.attack.model_dump() if spec.attack else None,
        "prompt_template": model_facts["prompt_template"],
        "metrics": metrics,
        "config": cfg.model_dump(),
        "seed": spec.seed,
        "device": model_facts["device"],
        "training": {k: v for k, v in stats.items() if k != "history"},
        "history": stats.get("history", []),
        "timings": timings,
        "peak_memory_mb": model_facts["peak_memory_mb"],
        "versions": versions(),
    }
    return report


def write_report(out_dir: Path, report: dict[str, Any]) -> None:
    """report.json, written to a temporary name and renamed: never half-written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_report = out_dir / "report.json.tmp"
    tmp_report.write_text(json.dumps(report, indent=2, default=str))
    tmp_report.replace(out_dir / "report.json")
