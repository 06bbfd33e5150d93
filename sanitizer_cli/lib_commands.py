"""Commands of this group are registered on the main `sanitizer` app by ``register``."""

import typer


def register(app: typer.Typer) -> None:
    pass
