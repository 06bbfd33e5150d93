"""The defenses. ``registry`` (torch-free) is the one list; ``METHODS`` maps a method name to
(config class, run function), resolved on first use so importing the configs never imports
torch.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "METHODS":
        from sanitizer.defenses.registry import REGISTRY

        methods = {n: (s.config, s.runner()) for n, s in REGISTRY.items()}
        globals()["METHODS"] = methods
        return methods
    raise AttributeError(name)
