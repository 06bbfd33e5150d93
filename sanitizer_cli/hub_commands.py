"""`sanitizer push`: publish a sanitized adapter to the Hugging Face Hub (huggingface_hub)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer


def push(
    adapter: Annotated[
        Path,
        typer.Argument(
            help="the sanitized adapter: the folder `defend --out` or `jobs download` wrote, "
            "or the downloaded .zip"
        ),
    ],
    repo: Annotated[str, typer.Option("--repo", help="the Hub repository, e.g. myorg/model-clean")],
    public: Annotated[
        bool, typer.Option("--public", help="create the repository public (default: private)")
    ] = False,
    revision: Annotated[str | None, typer.Option("--revision", help="branch to commit to")] = None,
    message: Annotated[
        str, typer.Option("--message", help="commit message")
    ] = "Sanitized adapter (backdoor removal)",
    endpoint: Annotated[
        str | None,
        typer.Option(
            "--endpoint", envvar="HF_ENDPOINT", help="Hub URL (default https://huggingface.co)"
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Publish a sanitized adapter (with its model card) to the Hugging Face Hub.

    The token comes from HF_TOKEN or `hf auth login`, never from the command line. The folder
    is checked first (safetensors only, a model card, every file as manifest.json lists it);
    nothing is pushed when a check fails. Exit codes: 0 pushed, 3 bad input, 4 Hub error.
    """
    from sanitizer.errors import SanitizerError
    from sanitizer.publish import push_adapter

    tmp: Path | None = None
    try:
        folder = adapter
        if adapter.is_file() and adapter.name.endswith((".zip", ".tar.gz", ".tgz", ".tar")):
            from sanitizer_client._archive import extract_archive

            tmp = Path(tempfile.mkdtemp(prefix="sanitizer-push-"))
            extract_archive(adapter, tmp)  # regular files only, no absolute/../link paths
            folder = tmp
        result = push_adapter(
            folder,
            repo,
            token=os.environ.get("HF_TOKEN"),
            endpoint=endpoint,
            private=not public,
            revision=revision,
            commit_message=message,
        )
    except SanitizerError as exc:
        typer.echo(f"error: {exc}" + (f"\nhint: {exc.hint}" if exc.hint else ""), err=True)
        raise typer.Exit(3) from exc
    except Exception as exc:  # huggingface_hub's HTTP and auth errors
        typer.echo(f"error: the Hub refused the push: {exc}", err=True)
        raise typer.Exit(4) from exc
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if json_out:
        typer.echo(json.dumps(result))
    else:
        typer.echo(
            f"pushed {result['files']} files to {result['repo_url']} ({result['commit_url']})"
        )


def register(app: typer.Typer) -> None:
    app.command("push")(push)
