"""The `sanitizer` command."""

import typer

app = typer.Typer(help="Remove backdoors from fine-tuned language models.", no_args_is_help=True)


def main() -> None:
    app()
