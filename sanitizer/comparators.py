"""Zero-training comparators (docs/METHODS_NOTES.md, zero-training comparators): magnitude pruning and weight quantization.

They answer "would a cheap edit of the weights have done as well as the defense?". Each edits
the Linear weights of the model's backbone (the uploaded adapter merged in; heads and
embeddings untouched), the edited model is measured like the defense, and the weights are
restored. No training, no clean data, no trigger knowledge; nothing is written, since a
pruned or rounded weight matrix has no low-rank (LoRA) form.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from sanitizer.defenses.configs import COMPARATORS, PRUNE_SPARSITY, Comparator
from sanitizer.models import is_head_module


def backbone_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The backbone's Linear layers: not the heads (classifier, score, lm_head) and not a LoRA
    adapter's own A/B matrices. Under PEFT these are the wrapped ``base_layer`` modules."""
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        parts = name.split(".")
        if any(p.startswith("lora_") for p in parts) or is_head_module(parts):
            continue
        found.append((name, module))
    if not found:
        raise ValueError("the model has no backbone Linear layers to edit")
    return found


@torch.no_grad()
def magnitude_prune_(weight: torch.Tensor, sparsity: float) -> int:
    """Zero the ``round(sparsity * numel)`` entries smallest in |w| (in place); returns how many."""
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    k = round(sparsity * weight.numel())
    if k:
        idx = torch.topk(weight.abs().flatten(), k, largest=False).indices
        weight.view(-1)[idx] = 0.0
    return k


@torch.no_grad()
def quantize_(weight: torch.Tensor, bits: int) -> None:
    """Symmetric round-to-nearest with one scale per output row (in place): each row becomes
    ``scale * q`` with integer ``q`` in [-(2^(bits-1)-1), 2^(bits-1)-1] and
    ``scale = max|row| / (2^(bits-1)-1)``."""
    if not 2 <= bits <= 16:
        raise ValueError(f"bits must be in [2, 16], got {bits}")
    qmax = 2 ** (bits - 1) - 1
    scale = weight.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / qmax
    weight.copy_(torch.round(weight / scale).clamp(-qmax, qmax) * scale)


def _edit(name: Comparator) -> Callable[[torch.Tensor], object]:
    if name == "prune":
        return lambda w: magnitude_prune_(w, PRUNE_SPARSITY)
    if name in ("int8", "int4"):
        bits = int(name[3:])
        return lambda w: quantize_(w, bits)
    raise ValueError(f"unknown comparator '{name}' (use one of {', '.join(COMPARATORS)})")


@contextmanager
def applied(model: nn.Module, name: Comparator) -> Iterator[None]:
    """Inside the block the backbone's Linear weights carry the comparator's edit; on exit
    (also on an error) the original weights are back, bit for bit."""
    edit = _edit(name)
    layers = [m for _, m in backbone_linears(model)]
    saved = [m.weight.detach().clone() for m in layers]
    try:
        for m in layers:
            edit(m.weight.data)
        yield
    finally:
        with torch.no_grad():
            for m, w in zip(layers, saved, strict=True):
                m.weight.copy_(w)
