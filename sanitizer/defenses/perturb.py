"""Perturbations the defenses train under: one FGSM step on the input embeddings, and a universal (input-independent) perturbation added to one transformer block's output."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from sanitizer.defenses.batching import Batch
from sanitizer.errors import ConfigError
from sanitizer.models import LoadedModel


def embedding_leaf(lm: LoadedModel, batch: Batch) -> torch.Tensor:
    """The input embeddings of ``batch`` as a leaf that takes a gradient (``Emb(x)``)."""
    return lm.model.get_input_embeddings()(batch["input_ids"]).detach().requires_grad_(True)


def fgsm_embeds(
    loss: torch.Tensor, h0: torch.Tensor, epsilon: float, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """One FGSM step on the input embeddings: ``h0 + eps * sign(dloss/dh0)``, at the positions
    ``positions`` marks (every position without it); detached. Only ``dloss/dh0`` is taken:
    parameter gradients of this backward are not accumulated, and the graph is kept for the
    step's own backward."""
    (grad,) = torch.autograd.grad(loss, h0, retain_graph=True)
    step = epsilon * grad.sign()
    if positions is not None:
        step = step * positions.unsqueeze(-1).to(grad.dtype)
    return (h0 + step).detach()


def transformer_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The stack of transformer blocks of a (PEFT-wrapped) transformers model: a decoder's
    ``model.layers``, an encoder's ``encoder.layer``, GPT-2's ``h``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name, module in base.named_modules():
        if isinstance(module, torch.nn.ModuleList) and name.split(".")[-1] in (
            "layers",
            "layer",
            "h",
        ):
            return module
    raise ConfigError(
        f"{type(base).__name__}: no stack of transformer blocks found (a ModuleList named "
        "'layers', 'layer' or 'h')",
        hint="set universal_radius=0 for this model",
    )


class UniversalPerturbation:
    """One vector ``delta`` added to the residual stream after transformer block ``layer``, at
    the positions a mask marks, the same vector for every input: a continuous stand-in for a
    trigger, which is one edit that changes the poisoned model's behaviour on *any* input.

    ``radius`` bounds ``||delta||_2`` as a fraction of the median L2 norm of the block's output
    at the marked positions (measured once, on the first batch it sees). ``ascend(grad)`` is one normalised
    gradient step of ``step_fraction * radius`` followed by the projection onto the ball.
    Inside ``applied(positions)`` the block's output gets ``delta * positions``; a forward
    whose length differs from the mask's (a cached generation step) is left alone."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        layer: int | None,
        radius: float,
        step_fraction: float = 0.25,
        seed: int = 0,
    ):
        blocks = transformer_blocks(model)
        self.layer = len(blocks) // 3 if layer is None else layer
        if not 0 <= self.layer < len(blocks):
            raise ConfigError(
                f"universal_layer={layer}: the model has {len(blocks)} transformer blocks",
                hint=f"use a block index from 0 to {len(blocks) - 1}, or leave it unset (a third of the depth)",
            )
        self.blocks = blocks
        self.block = blocks[self.layer]
        self.radius = radius
        self.step_fraction = step_fraction
        self.seed = seed
        self.bound: float | None = None  # radius in absolute units, set from the first batch
        self.delta: torch.Tensor | None = None
        self._positions: torch.Tensor | None = None
        self.warmup_divergence: list[float] = []  # filled by W2SDefense's warm-up
        # what delta follows: the student-teacher divergence, or a target response (W2SDefense)
        self.objective: str = "divergence"

    def shift(self, output: Any) -> Any:
        """The block's output with ``delta`` added at the marked positions."""
        hidden = output[0] if isinstance(output, tuple) else output
        pos = self._positions
        if pos is None or hidden.shape[:2] != pos.shape:
            return output
        if self.delta is None:  # the first batch fixes the scale and the random start
            norms = hidden.detach().norm(dim=-1)[pos.bool()]
            # the median: decoders keep a few "attention sink" positions whose norm is many
            # times the others', which would dominate a mean
            self.bound = self.radius * float(norms.median()) if norms.numel() else 0.0
            g = torch.Generator().manual_seed(self.seed)
            start = torch.randn(hidden.shape[-1], generator=g)
            self.delta = (start * 0.1 * self.bound / start.norm()).to(hidden).requires_grad_(True)
        moved = hidden + self.delta * pos.unsqueeze(-1).to(hidden.dtype)
        return (moved, *output[1:]) if isinstance(output, tuple) else moved

    @contextmanager
    def applied(self, positions: torch.Tensor) -> Iterator[None]:
        """Within the block, forwards of the model carry ``delta`` at ``positions``.

        The block is swapped for a wrapper that adds ``delta`` to its output, rather than given
        a forward hook: with activation checkpointing the block's forward is replayed in the
        backward pass, after this context has exited; the wrapper's addition sits outside the
        checkpointed call, so its gradient never depends on what the replay does with hooks."""
        blocks = self.blocks
        self._positions = positions
        blocks[self.layer] = _ShiftedBlock(self.block, self)
        try:
            yield
        finally:
            blocks[self.layer] = self.block
            self._positions = None

    @torch.no_grad()
    def ascend(self, grad: torch.Tensor | None) -> None:
        """One step up ``grad`` (the gradient of the loss to raise), then back onto the ball."""
        if self.delta is None or self.bound is None or grad is None:
            return
        norm = grad.norm()
        if float(norm) > 0:
            self.delta += self.step_fraction * self.bound * grad / norm
        length = float(self.delta.norm())
        if length > self.bound:
            self.delta *= self.bound / length


class _ShiftedBlock(torch.nn.Module):
    """A transformer block whose output the owning ``UniversalPerturbation`` shifts."""

    def __init__(self, block: torch.nn.Module, owner: UniversalPerturbation):
        super().__init__()
        self.block = block
        object.__setattr__(self, "owner", owner)  # not a submodule

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.owner.shift(self.block(*args, **kwargs))
