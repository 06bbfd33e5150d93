"""The `sanitizer` command: one entry point, commands grouped by layer.

Each group lives in its own module and imports heavy dependencies (torch, fastapi, celery)
inside the command functions, so `sanitizer --help` is fast and the client commands work
on a machine without torch.
"""

import typer

from sanitizer_cli import assets_cmd, client_commands, hub_commands, lib_commands, service_commands

app = typer.Typer(
    help="Remove backdoors from fine-tuned language models (rebuild, CROW, W2SDefense, ...) "
    "and scan models for them.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"sanitizer {version('backdoor-sanitizer')}")
        except PackageNotFoundError:
            typer.echo("sanitizer (not installed as a package)")
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="print the version and exit"
    ),
) -> None:
    """Remove backdoors from fine-tuned language models and scan models for them."""


for module in (assets_cmd, lib_commands, service_commands, client_commands, hub_commands):
    module.register(app)


def main() -> None:
    app()
