"""The `sanitizer` command: one entry point, commands grouped by layer.

Each group lives in its own module and imports heavy dependencies (torch, fastapi, celery)
inside the command functions, so `sanitizer --help` is fast and the client commands work
on a machine without torch.
"""

import typer

from sanitizer_cli import assets_cmd, client_commands, lib_commands, service_commands

app = typer.Typer(
    help="Remove backdoors from fine-tuned language models (W2SDefense, CROW).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for module in (assets_cmd, lib_commands, service_commands, client_commands):
    module.register(app)


def main() -> None:
    app()
