"""The defenses: ``METHODS`` maps a method name to (config class, run function).

Configs live in the torch-free ``sanitizer.defenses.configs``; ``METHODS`` is resolved on first
use so importing the configs never imports torch.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "METHODS":
        from sanitizer.defenses import crow, finetune, w2sdefense
        from sanitizer.defenses.configs import CONFIGS

        methods = {
            "finetune": (CONFIGS["finetune"], finetune.run),
            "w2sdefense": (CONFIGS["w2sdefense"], w2sdefense.run),
            "crow": (CONFIGS["crow"], crow.run),
        }
        globals()["METHODS"] = methods
        return methods
    raise AttributeError(name)
