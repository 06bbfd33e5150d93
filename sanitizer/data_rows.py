"""The row types of a dataset (classification and generation) and the task names. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Task = Literal["classification", "generation"]

MAX_CLASSES = 1000  # label ids and distinct names: bounded whatever a file says


@dataclass(frozen=True)
class ClassificationRow:
    text: str
    label: int


@dataclass(frozen=True)
class GenerationRow:
    instruction: str
    input: str
    output: str


Row = ClassificationRow | GenerationRow
