"""Overall progress and ETA of a job across its phases (issue 26 item 8).

The library reports each phase on its own (step/total, the training phase's ETA). A pipeline
polling a job wants one number: how far along the whole job is and when it will end. The
phases a job will run are known from its spec; their durations are estimated from what the
job has measured so far: the current phase from its step rate (or the library's ETA), the
evaluation after training as long as the one before it, a scan as long as one evaluation,
a baseline as long as training plus an evaluation. Until training has a step rate nothing
is promised (``None``): a guess that moves by hours helps nobody. The fraction never goes
backwards."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FIXED = ("load", "evaluate_before", "evaluate_after", "scan", "save", "comparators")


def bucket(phase: str | None) -> str:
    """The plan step a reported phase belongs to (a defense names its own training phases)."""
    if not phase:
        return "load"
    if phase.startswith("baseline"):
        return "baseline"
    if phase.startswith("comparator"):
        return "comparators"
    return phase if phase in FIXED else "train"


def plan_for(spec: dict[str, Any]) -> list[str]:
    ev = spec.get("evaluation") or {}
    steps = ["load", "evaluate_before", "train", "evaluate_after"]
    if spec.get("scan_after") or ev.get("scan"):
        steps.append("scan")
    steps.append("save")
    if ev.get("baseline"):
        steps.append("baseline")
    if ev.get("comparators"):
        steps.append("comparators")
    return steps


@dataclass
class OverallProgress:
    plan: list[str]
    started: float
    durations: dict[str, float] = field(default_factory=dict)  # finished plan steps
    current: str = "load"
    current_since: float = 0.0
    fraction: float = 0.0

    def __post_init__(self) -> None:
        self.current_since = self.started

    def update(self, d: dict[str, Any], now: float) -> tuple[float | None, float | None]:
        """(fraction 0..1, seconds left) after a progress event, or (None, None) when the
        remaining time cannot be estimated yet."""
        b = bucket(d.get("phase"))
        if b != self.current and b in self.plan:
            self.durations[self.current] = (
                self.durations.get(self.current, 0.0) + now - self.current_since
            )
            self.current, self.current_since = b, now
        left_now = self._current_left(d, now)
        if left_now is None:
            return None, None
        later = self.plan[self.plan.index(self.current) + 1 :] if self.current in self.plan else []
        estimates = [self._estimate(step) for step in later]
        if any(e is None for e in estimates):
            return None, None
        left = left_now + sum(e for e in estimates if e is not None)
        elapsed = now - self.started
        frac = elapsed / (elapsed + left) if elapsed + left > 0 else 0.0
        self.fraction = min(1.0, max(self.fraction, frac))
        return round(self.fraction, 4), round(left, 1)

    def _current_left(self, d: dict[str, Any], now: float) -> float | None:
        if d.get("eta_seconds") is not None:
            return float(d["eta_seconds"])
        step, total = int(d.get("step") or 0), int(d.get("total_steps") or 0)
        if total and step:
            return (now - self.current_since) * (total - step) / step
        return 0.0 if self.current in ("load", "save") else None

    def _estimate(self, step: str) -> float | None:
        ev = self.durations.get("evaluate_before")
        train = self.durations.get("train")
        if step in ("load", "save"):
            return 0.0
        if step in ("evaluate_after", "scan", "comparators"):
            return ev
        if step == "baseline":
            return None if train is None or ev is None else train + ev
        return self.durations.get(step)
