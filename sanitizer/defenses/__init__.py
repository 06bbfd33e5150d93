"""The defenses. A plain dict maps a method name to its module's config class and ``run``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sanitizer.defenses import crow, finetune, w2sdefense
from sanitizer.defenses.common import TrainConfig

METHODS: dict[str, tuple[type[TrainConfig], Callable[..., dict[str, Any]]]] = {
    "finetune": (finetune.FinetuneConfig, finetune.run),
    "w2sdefense": (w2sdefense.W2SConfig, w2sdefense.run),
    "crow": (crow.CrowConfig, crow.run),
}
