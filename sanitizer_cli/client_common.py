"""What the client commands share: exit codes, option types, error handling, the progress
view and the summary table. No torch."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, NoReturn

import typer
from typer.core import TyperCommand, TyperGroup

try:  # recent typer vendors click; older releases use the click package
    from typer._click.exceptions import UsageError as _UsageError
except ImportError:  # pragma: no cover
    from click import UsageError as _UsageError  # type: ignore[assignment]
EXIT_OK = 0
EXIT_POLICY = 1
EXIT_JOB = 2
EXIT_USAGE = 3
EXIT_UNREACHABLE = 4
EXIT_VERIFY = 5


class _Command(TyperCommand):
    """Usage errors exit with 3 (click's default 2 means "job failed" here)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _UsageError as e:
            e.exit_code = EXIT_USAGE
            raise


class _Group(TyperGroup):
    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except _UsageError as e:
            e.exit_code = EXIT_USAGE
            raise

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except _UsageError as e:
            e.exit_code = EXIT_USAGE
            raise


Url = Annotated[
    str | None,
    typer.Option("--url", envvar="SANITIZER_URL", help="service URL [env: SANITIZER_URL]"),
]

ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="SANITIZER_API_KEY",
        help="API key [env: SANITIZER_API_KEY]",
        show_default=False,
    ),
]

JsonOut = Annotated[bool, typer.Option("--json", help="print JSON on stdout (for machines)")]

Timeout = Annotated[float, typer.Option("--http-timeout", help="seconds per HTTP request")]

MaxAsr = Annotated[
    float | None,
    typer.Option("--max-asr", help="policy: fail (exit 1) if ASR after > this (e.g. 0.05)"),
]

MaxCaDrop = Annotated[
    float | None,
    typer.Option(
        "--max-ca-drop", help="policy: fail (exit 1) if clean accuracy drops by more (e.g. 0.01)"
    ),
]


def _err(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[bold red]error:[/] {escape(message)}"
    )


def _die(code: int, message: str) -> NoReturn:
    _err(message)
    raise typer.Exit(code)


def _client(url: str | None, api_key: str | None, timeout: float = 60.0) -> Any:
    from sanitizer_client import Client

    return Client(url, api_key, timeout=timeout)


class _handle_errors:
    """Map SDK exceptions to exit codes and a one-line message (context manager)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None or isinstance(exc, typer.Exit):
            return None
        from sanitizer_client import (
            APIConnectionError,
            APIError,
            ChecksumMismatchError,
            SanitizerClientError,
            WaitTimeoutError,
        )

        if isinstance(exc, APIConnectionError):
            _die(EXIT_UNREACHABLE, str(exc))
        if isinstance(exc, APIError):
            _die(EXIT_UNREACHABLE if exc.status >= 500 else EXIT_USAGE, str(exc))
        if isinstance(exc, ChecksumMismatchError):
            _die(EXIT_VERIFY, f"verification failed: {exc}")
        if isinstance(exc, WaitTimeoutError):
            _die(EXIT_JOB, str(exc))
        if isinstance(exc, SanitizerClientError):
            _die(EXIT_USAGE, str(exc))
        return None


def _print_json(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _parse_params(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            _die(EXIT_USAGE, f"--param '{item}' is not key=value (e.g. --param epochs=3)")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def _pct(v: Any) -> str:
    from sanitizer.report_html import format_value

    return format_value(v, "attack_success_rate") if isinstance(v, (int, float)) else "–"


class ProgressView:
    """Live bar on a terminal (step/total, loss, ETA); plain log lines otherwise (CI logs)."""

    def __init__(self, enabled: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled
        self.live = enabled and self.console.is_terminal
        self._progress: Any = None
        self._task: Any = None
        self._last_line = ("", -1, 0.0)

    def __enter__(self) -> ProgressView:
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description:<16}"),
                BarColumn(),
                TextColumn("{task.fields[steps]}"),
                TextColumn("{task.fields[loss]}"),
                TextColumn("{task.fields[eta]}"),
                TimeElapsedColumn(),
                console=self.console,
            )
            self._progress.start()
            self._task = self._progress.add_task("submitted", total=None, steps="", loss="", eta="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, job: Any) -> None:
        if not self.enabled:
            return
        p = job.progress
        phase = p.phase or job.status
        steps = f"{p.step}/{p.total_steps}" if p.step is not None and p.total_steps else ""
        loss = " ".join(f"{k}={v:.4f}" for k, v in p.losses.items())
        eta = f"ETA {_duration(p.eta_seconds)}" if p.eta_seconds is not None else ""
        if p.overall is not None and not job.done:  # the whole job, across phases
            whole = f"job {100 * p.overall:.0f}%"
            if p.overall_eta_seconds is not None:
                whole += f", done in {_duration(p.overall_eta_seconds)}"
            eta = f"{eta} ({whole})" if eta else f"({whole})"
        if self._progress is not None:
            self._progress.update(
                self._task,
                description=phase if not job.done else job.status,
                total=p.total_steps or None,
                completed=p.step or 0,
                steps=steps,
                loss=loss,
                eta=eta,
            )
            return
        # Non-terminal: a line on phase change, and at most every 10 s otherwise.
        now = time.monotonic()
        last_phase, last_step, last_t = self._last_line
        if phase != last_phase or (p.step != last_step and now - last_t >= 10) or job.done:
            parts = [f"[{job.status}]", phase, steps, loss, eta]
            self.console.print(" ".join(x for x in parts if x), highlight=False, markup=False)
            self._last_line = (phase, p.step if p.step is not None else -1, now)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(round(seconds))
    return (
        f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


def _policy(max_asr: float | None, max_ca_drop: float | None) -> Any:
    from sanitizer.report_html import Policy

    return Policy(max_asr=max_asr, max_ca_drop=max_ca_drop)


def _summary_table(report: dict[str, Any], verdict: Any = None) -> Any:
    from rich.table import Table

    metrics = report.get("metrics") or {}
    before, after = metrics.get("before") or {}, metrics.get("after") or {}
    t = Table(
        title=f"{report.get('method', '')} on {(report.get('base_model') or {}).get('id', '')}"
    )
    t.add_column("metric")
    t.add_column("before", justify="right")
    t.add_column("after", justify="right")
    for key, label in (
        ("flip_rate", "flip rate"),
        ("attack_success_rate", "ASR"),
        ("clean_accuracy", "CA"),
        ("utility_token_f1", "utility (token F1)"),
        ("false_trigger_rate", "false-trigger rate"),
    ):
        if key in before or key in after:
            t.add_row(label, _pct(before.get(key)), _pct(after.get(key)))
    if isinstance(metrics.get("der"), (int, float)):
        t.add_row("DER", "", _pct(metrics["der"]))
    if verdict is not None:
        t.caption = (
            "[bold green]PASSED the policy[/]"
            if verdict.passed
            else "[bold red]FAILED the policy[/]: " + "; ".join(verdict.reasons)
        )
    return t


def _attack_dict(
    attack: str | None, trigger: str | None, target_label: str | None, target: str | None
) -> dict[str, Any] | None:
    if attack is None:
        if trigger or target_label or target:
            _die(EXIT_USAGE, "--trigger/--target-label/--target need --attack NAME")
        return None
    spec: dict[str, Any] = {"name": attack}
    if trigger is not None:
        spec["trigger"] = trigger
    if target_label is not None:
        spec["target_label"] = (
            int(target_label) if target_label.lstrip("-").isdigit() else target_label
        )
    if target is not None:
        spec["target"] = target
    return spec


def _check_names(
    client: Any, base_model: str, method: str | None, hyperparameters: dict[str, Any]
) -> None:
    """Before any upload: the model(s) and the method must exist on the service, or nothing is
    uploaded (no orphan files) and the error lists what does exist. Models named in
    hyperparameters: ``teacher_model`` (W2SDefense) and ``trusted_base`` (rebuild)."""
    from sanitizer_client import NotFoundError

    try:
        models = client.models.ids()
        methods = client.methods.ids()
    except NotFoundError:
        return  # a service older than /v1/models: it checks at submission
    named = [("--base-model", base_model)] + [
        (f"-p {k}", hyperparameters.get(k)) for k in ("teacher_model", "trusted_base")
    ]
    for flag, name in named:
        if name is not None and str(name) not in models:
            _die(
                EXIT_USAGE,
                f"{flag} {name}: the service has no such model (it has: "
                f"{', '.join(models) or 'none'}); nothing was uploaded. An operator installs "
                "one with `sanitizer assets` or publishes it with `sanitizer models push`",
            )
    if method is not None and method not in methods:
        _die(
            EXIT_USAGE,
            f"--method {method}: unknown on the service (use one of: {', '.join(methods)}); "
            "nothing was uploaded",
        )


def _scan_line(scan: dict[str, Any]) -> str:
    top = (scan.get("candidates") or [{}])[0]
    if scan.get("verdict") == "backdoor":
        return (
            f"scan: BACKDOOR DETECTED (flip rate {100 * float(scan.get('score', 0)):.1f}%, "
            f"target {scan.get('target_name')}, top trigger candidate {top.get('trigger')!r})"
        )
    return f"scan: no backdoor found (top flip rate {100 * float(scan.get('score', 0)):.1f}%)"
