"""Facts about the running process for the report: package versions and peak memory."""

from __future__ import annotations

import platform
import resource
import sys
from pathlib import Path
from typing import Any

from sanitizer import __version__


def versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {
        "sanitizer": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }


PROC_STATUS = Path("/proc/self/status")


def reset_peak_memory() -> None:
    """Start the job's peak-memory count afresh: a worker process runs many jobs (and a
    benchmark trains the attack in the same process), so the process-lifetime maximum would
    report an earlier job's peak. Linux: writing 5 to clear_refs resets VmHWM; CUDA: the
    allocator's peak. Elsewhere (macOS) the process-lifetime maximum is all there is."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_mb(device: Any) -> float:
    import torch

    if getattr(device, "type", "") == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:  # Linux: the high-water mark since reset_peak_memory
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**20 if sys.platform == "darwin" else 2**10)
