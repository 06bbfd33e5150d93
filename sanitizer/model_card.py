"""The adapter's model card (README.md with the Hugging Face Hub's YAML metadata).

PEFT's ``save_pretrained`` writes a template card whose ``base_model`` is whatever path the
base was loaded from (a local cache folder here); this one names the model id, the method and,
for a sanitized adapter, the measured before/after metrics and the data hashes. Torch-free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

PIPELINE_TAGS = {"classification": "text-classification", "generation": "text-generation"}


def _yaml_scalar(v: Any) -> str:
    return json.dumps(v)  # JSON strings and numbers are valid YAML scalars


def _pct(v: Any) -> str:
    return f"{100 * v:.1f}%" if isinstance(v, (int, float)) else "–"


def render(
    base_model: str,
    task: str,
    label_names: list[str] | None,
    report: dict[str, Any] | None = None,
    *,
    title: str | None = None,
) -> str:
    method = (report or {}).get("method")
    tags = ["peft", "lora", "backdoor-sanitizer"] + ([f"sanitized-{method}"] if method else [])
    meta = [
        "---",
        f"base_model: {_yaml_scalar(base_model)}",
        "library_name: peft",
        f"pipeline_tag: {PIPELINE_TAGS.get(task, task)}",
        "tags:",
        *[f"- {t}" for t in tags],
    ]
    metrics = ((report or {}).get("metrics") or {}) if report else {}
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    index = []
    for key, name in (
        ("attack_success_rate", "attack success rate"),
        ("flip_rate", "flip rate"),
        ("clean_accuracy", "clean accuracy"),
        ("utility_token_f1", "utility (token F1)"),
    ):
        if isinstance(after.get(key), (int, float)):
            index += [
                f"      - type: {key}",
                f"        name: {_yaml_scalar(name + ' after sanitization')}",
                f"        value: {after[key]:.4f}",
            ]
    if index:
        meta += [
            "model-index:",
            f"- name: {_yaml_scalar(title or base_model + ' (sanitized)')}",
            "  results:",
            f"  - task: {{type: {PIPELINE_TAGS.get(task, task)}}}",
            "    metrics:",
            *index,
        ]
    meta.append("---")

    body = [f"# {title or 'LoRA adapter for ' + base_model}", ""]
    if report:
        body += [
            f"Sanitized with **{method}** by the backdoor-sanitizer service"
            + (f" ({report.get('method_reason')})" if report.get("method_reason") else "")
            + ".",
            "",
            "| metric | before | after |",
            "|---|---|---|",
        ]
        for key, name in (
            ("attack_success_rate", "ASR"),
            ("flip_rate", "flip rate"),
            ("false_trigger_rate", "false-trigger rate"),
            ("clean_accuracy", "clean accuracy"),
            ("utility_token_f1", "utility (token F1)"),
        ):
            if key in before or key in after:
                body.append(f"| {name} | {_pct(before.get(key))} | {_pct(after.get(key))} |")
        data = report.get("datasets") or {}
        clean = data.get("clean") or {}
        body += [
            "",
            f"Clean data: {clean.get('rows', '?')} rows, sha256 `{clean.get('sha256', '?')}`.",
            f"Base model sha256: `{(report.get('base_model') or {}).get('sha256', '?')}`.",
            "The full report (configuration, timings, seeds) is `report.json` of the job.",
            "",
        ]
    if label_names:
        id2label = {i: n for i, n in enumerate(label_names)}
        body += [
            "## Loading",
            "",
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForSequenceClassification",
            "",
            f"id2label = {id2label!r}",
            "base = AutoModelForSequenceClassification.from_pretrained(",
            f"    {base_model!r}, num_labels={len(label_names)}, id2label=id2label,",
            "    label2id={v: k for k, v in id2label.items()})",
            "model = PeftModel.from_pretrained(base, 'path/to/this/folder')",
            "```",
            "",
        ]
    elif task == "generation":
        body += [
            "## Loading",
            "",
            "```python",
            "from peft import AutoPeftModelForCausalLM",
            "model = AutoPeftModelForCausalLM.from_pretrained('path/to/this/folder')",
            "```",
            "",
        ]
    return "\n".join(meta + [""] + body)


def write(out_dir: Path, *args: Any, **kwargs: Any) -> Path:
    path = Path(out_dir) / "README.md"
    path.write_text(render(*args, **kwargs), encoding="utf-8")
    return path
