"""Objects the SDK returns. Each keeps the server's full dict in ``raw``.

The parsing is tolerant: unknown fields stay in ``raw``, missing ones are ``None``, so a
newer server does not break an older client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


@dataclass
class Progress:
    phase: str | None = None
    step: int | None = None
    total_steps: int | None = None
    epoch: int | None = None
    eta_seconds: float | None = None
    losses: dict[str, float] = field(default_factory=dict)
    message: str | None = None
    overall: float | None = None  # share of the whole job done, across phases (0..1)
    overall_eta_seconds: float | None = None  # until the whole job ends (estimated)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: Any) -> Progress:
        d = d if isinstance(d, dict) else {}
        losses = d.get("losses") or d.get("metrics") or {}
        step, total = d.get("step"), d.get("total_steps", d.get("total"))
        return cls(
            phase=d.get("phase"),
            step=int(step) if _num(step) is not None else None,
            total_steps=int(total) if _num(total) is not None else None,
            epoch=d.get("epoch"),
            eta_seconds=_num(d.get("eta_seconds", d.get("eta"))),
            losses={k: float(v) for k, v in losses.items() if _num(v) is not None}
            if isinstance(losses, dict)
            else {},
            message=d.get("message"),
            overall=_num(d.get("overall")),
            overall_eta_seconds=_num(d.get("overall_eta_seconds")),
            raw=d,
        )

    @property
    def fraction(self) -> float | None:
        if self.step is None or not self.total_steps:
            return None
        return min(1.0, self.step / self.total_steps)


@dataclass
class Job:
    id: str
    status: str
    method: str | None = None
    base_model: str | None = None
    progress: Progress = field(default_factory=Progress)
    error: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        base = d.get("base_model")
        if isinstance(base, dict):
            base = base.get("id")
        return cls(
            id=str(d.get("id")),
            status=str(d.get("status")),
            method=d.get("method"),
            base_model=base,
            progress=Progress.from_dict(d.get("progress")),
            error=d.get("error") if isinstance(d.get("error"), dict) else None,
            metadata=d.get("metadata") or {},
            created_at=d.get("created_at"),
            started_at=d.get("started_at"),
            finished_at=d.get("finished_at"),
            raw=d,
        )

    @property
    def done(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


@dataclass
class FileObject:
    id: str
    filename: str | None = None
    purpose: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    created_at: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FileObject:
        return cls(
            id=str(d.get("id")),
            filename=d.get("filename"),
            purpose=d.get("purpose"),
            bytes=d.get("bytes"),
            sha256=d.get("sha256"),
            created_at=d.get("created_at"),
            raw=d,
        )


@dataclass
class Event:
    id: str | None
    level: str | None
    message: str | None
    created_at: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        return cls(
            id=None if d.get("id") is None else str(d.get("id")),
            level=d.get("level"),
            message=d.get("message"),
            created_at=d.get("created_at"),
            metrics=d.get("metrics") or d.get("data") or {},
            raw=d,
        )


@dataclass
class Page:
    """One page of a list endpoint: ``data`` items, ``has_more`` and the cursor to go on."""

    data: list[Any]
    has_more: bool
    next_after: str | None


@dataclass
class AdapterDownload:
    """Result of ``jobs.download_adapter``."""

    path: Path  # the extracted directory, or the archive when dest named an archive
    archive_sha256: str
    verified: bool
    manifest: dict[str, Any] | None
    files: list[str]
