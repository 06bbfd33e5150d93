"""What every defense shares: the base config, batching, the training loop, dev selection.

A defense module defines its config (subclass of ``TrainConfig``) and a ``step_loss``
function that maps a batch to ``(total_loss, {term: value})``; ``train`` runs the loop with
progress reporting, cancellation checks and best-clean-dev checkpoint selection.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from sanitizer.defenses.configs import TrainConfig, validate_config  # noqa: F401  (re-exported)
from sanitizer.errors import Cancelled, ConfigError
from sanitizer.models import LoadedModel, trainable_parameters


@dataclass
class ProgressEvent:
    phase: str
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    losses: dict[str, float] = field(default_factory=dict)
    eta_seconds: float | None = None
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ProgressFn = Callable[[ProgressEvent], None]
CancelFn = Callable[[], bool]


def set_seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


# ---------------------------------------------------------------- batching

Batch = dict[str, torch.Tensor]


def classification_batch(
    lm: LoadedModel, texts: Sequence[str], labels: Sequence[int] | None, max_length: int
) -> Batch:
    enc = lm.tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    batch = {k: v.to(lm.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    if labels is not None:
        batch["labels"] = torch.tensor(list(labels), dtype=torch.long, device=lm.device)
    return batch


def generation_batch(lm: LoadedModel, rows: Sequence[Any], max_length: int) -> Batch:
    """Prompt (in the model's template) + response + eos; loss only on response tokens."""
    tok = lm.tokenizer
    seqs, masks = [], []
    for row in rows:
        prompt_ids = tok(lm.prompt(row.instruction, row.input), add_special_tokens=False)[
            "input_ids"
        ]
        resp_ids = tok(row.output, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = (
            (prompt_ids + resp_ids)[-max_length:]
            if len(prompt_ids) + len(resp_ids) > max_length
            else prompt_ids + resp_ids
        )
        n_resp = min(len(resp_ids), len(ids))
        seqs.append(ids)
        masks.append([0] * (len(ids) - n_resp) + [1] * n_resp)
    width = max(len(s) for s in seqs)
    pad = tok.pad_token_id
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (s, m) in enumerate(zip(seqs, masks, strict=True)):
        off = width - len(s)  # left padding, as for generation
        input_ids[i, off:] = torch.tensor(s)
        attention[i, off:] = 1
        labels[i, off:] = torch.where(torch.tensor(m) == 1, torch.tensor(s), torch.tensor(-100))
    return {
        "input_ids": input_ids.to(lm.device),
        "attention_mask": attention.to(lm.device),
        "labels": labels.to(lm.device),
    }


def make_batch(lm: LoadedModel, rows: Sequence[Any], max_length: int) -> Batch:
    if lm.task == "classification":
        return classification_batch(lm, [r.text for r in rows], [r.label for r in rows], max_length)
    return generation_batch(lm, rows, max_length)


def iterate_batches(
    rows: Sequence[Any], batch_size: int, seed: int, epoch: int
) -> Iterator[list[Any]]:
    order = list(range(len(rows)))
    random.Random(seed * 1000 + epoch).shuffle(order)
    for i in range(0, len(order), batch_size):
        yield [rows[j] for j in order[i : i + batch_size]]


def task_loss(lm: LoadedModel, out: Any, batch: Batch) -> torch.Tensor:
    """Classification CE, or causal-LM CE on response tokens only."""
    if lm.task == "classification":
        return F.cross_entropy(out.logits, batch["labels"])
    logits = out.logits[:, :-1].float()
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100
    )


def pooled_feature(
    lm: LoadedModel, hidden: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """The final hidden state at the position the classifier reads: the last real token for
    decoders (works for left and right padding), the first token for encoders."""
    if not lm.is_decoder:
        return hidden[:, 0]
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    last = (attention_mask * positions).argmax(dim=1)
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


# ---------------------------------------------------------------- dev evaluation


@torch.inference_mode()
def reference_nll(
    lm: LoadedModel,
    rows: Sequence[Any],
    *,
    max_length: int = 256,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> float:
    """Mean per-token NLL of the reference responses (response tokens only), summed over every
    token, so it does not depend on the batch."""
    sums, counts = row_nll(
        lm, rows, max_length=max_length, batch_size=batch_size, on_batch=on_batch
    )
    return sum(sums) / max(1, sum(counts))


@torch.inference_mode()
def row_nll(
    lm: LoadedModel,
    rows: Sequence[Any],
    *,
    max_length: int = 256,
    batch_size: int = 8,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[list[float], list[int]]:
    """Per row: the summed NLL of its reference response tokens, and how many there are."""
    sums: list[float] = []
    counts: list[int] = []
    for i in range(0, len(rows), batch_size):
        batch = generation_batch(lm, rows[i : i + batch_size], max_length)
        logits = (
            lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
            .logits[:, :-1]
            .float()
        )
        labels = batch["labels"][:, 1:]
        nll = F.cross_entropy(
            logits.transpose(1, 2), labels, ignore_index=-100, reduction="none"
        )  # (B, T); 0 where ignored
        sums += nll.sum(dim=1).tolist()
        counts += (labels != -100).sum(dim=1).tolist()
        if on_batch is not None:
            on_batch(len(rows[i : i + batch_size]))
    return sums, counts


def _ratio_stderr(sums: Sequence[float], counts: Sequence[int]) -> float:
    """Standard error of the ratio estimator sum(sums)/sum(counts) over rows (delta method)."""
    n = len(sums)
    if n < 2 or not sum(counts):
        return 0.0
    r = sum(sums) / sum(counts)
    mean_c = sum(counts) / n
    var = sum((s - r * c) ** 2 for s, c in zip(sums, counts, strict=True)) / (n - 1)
    return math.sqrt(var / n) / mean_c


@torch.no_grad()
def dev_stats(
    lm: LoadedModel, dev_rows: Sequence[Any], max_length: int, batch_size: int | None = None
) -> tuple[float, float]:
    """(dev score, its standard error). The score is higher-is-better: accuracy and its
    binomial sqrt(p(1-p)/n) for classification; minus the mean NLL per response token
    (``reference_nll``) and the ratio estimator's standard error over rows for generation.

    Default batch: 32 rows for classification, 8 for generation, whose full-vocabulary logits
    are large (SmolLM2-135M, 160 tokens: batch 32 raised the process's peak RSS by 3.1 GB,
    batch 8 by 1.1 GB)."""
    model = lm.model
    was_training = model.training
    model.eval()
    if lm.task == "classification":
        batch_size = batch_size or 32
        correct = 0
        for i in range(0, len(dev_rows), batch_size):
            batch = make_batch(lm, dev_rows[i : i + batch_size], max_length)
            labels = batch.pop("labels")
            correct += int((model(**batch).logits.argmax(-1) == labels).sum())
        score = correct / len(dev_rows) if dev_rows else 0.0
        stderr = math.sqrt(score * (1 - score) / len(dev_rows)) if dev_rows else 0.0
    else:
        sums, counts = row_nll(lm, dev_rows, max_length=max_length, batch_size=batch_size or 8)
        score = -sum(sums) / max(1, sum(counts))
        stderr = _ratio_stderr(sums, counts)
    if was_training:
        model.train()
    return score, stderr


# ---------------------------------------------------------------- adversarial input step


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


# ---------------------------------------------------------------- universal perturbation


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


# ---------------------------------------------------------------- activation checkpointing


def _checkpointable(model: torch.nn.Module) -> Any:
    """The transformers model under ``model`` (a PeftModel's base model), or a ConfigError
    naming the class when it cannot checkpoint its layers."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        raise ConfigError(
            f"gradient_checkpointing: {type(base).__name__} does not support activation "
            "checkpointing in transformers",
            hint="set gradient_checkpointing=false for this model (decoder LMs such as Llama, "
            "Mistral or SmolLM2 and BERT encoders support it; MPNet does not)",
        )
    return base


def check_checkpointing(lm: LoadedModel, cfg: TrainConfig) -> None:
    """Refuse a job that asks for checkpointing on a model that cannot do it, at job start
    (before a W2SDefense teacher is trained), not after minutes of work."""
    if cfg.gradient_checkpointing:
        _checkpointable(lm.model)


@contextmanager
def activation_checkpointing(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Within the block, each transformer layer keeps only its input and recomputes its
    activations in the backward pass (non-reentrant ``torch.utils.checkpoint``, which replays
    the RNG state, so dropout masks and gradients are the same as without it). Restored after,
    so evaluation and saving see the model as it was."""
    if not enabled:
        yield
        return
    base = _checkpointable(model)
    if hasattr(base, "activation_checkpointing_enable"):  # transformers 5 renamed the methods
        base.activation_checkpointing_enable({"use_reentrant": False})
        disable = base.activation_checkpointing_disable
    else:
        base.gradient_checkpointing_enable({"use_reentrant": False})
        disable = base.gradient_checkpointing_disable
    try:
        yield
    finally:
        disable()
        if getattr(base, "_require_grads_hook", None) is not None:
            base.disable_input_require_grads()  # the hook enable() adds for frozen embeddings


# ---------------------------------------------------------------- the loop

StepLoss = Callable[[LoadedModel, Batch, Sequence[Any]], tuple[torch.Tensor, dict[str, float]]]


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total: int):
    warm = int(cfg.warmup_ratio * total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / max(1, warm)
        if cfg.schedule == "constant":
            return 1.0
        progress = (step - warm) / max(1, total - warm)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return max(0.0, 1 - progress)

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def autocast(device: Any) -> Any:
    """bf16 autocast on a CUDA device that supports it (weights stay fp32, matmuls run in
    bf16), plain fp32 elsewhere: on these CPUs bf16 matmuls are ~400x slower than fp32."""
    import contextlib

    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision_of(device: Any) -> str:
    cuda = getattr(device, "type", str(device)) == "cuda"
    return "bf16-autocast" if cuda and torch.cuda.is_bf16_supported() else "fp32"


def train(
    lm: LoadedModel,
    train_rows: Sequence[Any],
    dev_rows: Sequence[Any],
    cfg: TrainConfig,
    step_loss: StepLoss,
    *,
    phase: str = "defense",
    params: list[torch.nn.Parameter] | None = None,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
) -> dict[str, Any]:
    """Optimise ``params`` (default: the trainable parameters of ``lm.model``) on ``step_loss``.

    After each epoch the clean-dev score is computed; the best epoch's trainable weights are
    restored at the end (clean dev only: the defender has no triggered data). With
    ``cfg.gradient_checkpointing`` the layers' activations are recomputed in the backward pass.
    """
    set_seed(cfg.seed)
    model = lm.model
    params = params if params is not None else trainable_parameters(model)
    if not params:
        raise ConfigError("nothing to train: no parameter requires grad")
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_rows) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    sched = make_scheduler(opt, cfg, total)
    history: list[dict[str, Any]] = []
    best_score, best_epoch, best_state = -math.inf, -1, None
    chosen_score = -math.inf
    rule = cfg.select_tolerance
    tol = 0.0 if rule == "stderr" else rule
    if tol is None:
        tol = 1.0 / len(dev_rows) + 1e-9 if lm.task == "classification" and dev_rows else 0.0
    step, start = 0, time.monotonic()
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with activation_checkpointing(model, cfg.gradient_checkpointing):
        for epoch in range(cfg.epochs):
            for rows in iterate_batches(train_rows, cfg.batch_size, cfg.seed, epoch):
                if should_cancel and step % cfg.cancel_check_every == 0 and should_cancel():
                    raise Cancelled(f"cancelled at step {step} of {total}")
                batch = make_batch(lm, rows, cfg.max_length)
                with autocast(lm.device):
                    loss, terms = step_loss(lm, batch, rows)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                sched.step()
                step += 1
                terms = {"loss": float(loss.detach()), **terms}
                history.append({"phase": phase, "step": step, "epoch": epoch, "losses": terms})
                if progress:
                    elapsed = time.monotonic() - start
                    progress(
                        ProgressEvent(
                            phase,
                            step,
                            total,
                            epoch,
                            terms,
                            eta_seconds=elapsed / step * (total - step),
                        )
                    )
                if step >= total:
                    break
            if cfg.eval_every_epoch and dev_rows:
                score, stderr = dev_stats(lm, dev_rows, cfg.max_length)
                history.append(
                    {
                        "phase": phase,
                        "step": step,
                        "epoch": epoch,
                        "dev_score": score,
                        "dev_stderr": stderr,
                    }
                )
                if progress:
                    progress(
                        ProgressEvent(
                            phase, step, total, epoch, {"dev_score": score}, message="epoch done"
                        )
                    )
                # the latest epoch within `tol` of the best so far: later epochs carry more defense
                # training, and a dev score one example lower is noise. Streaming: the final choice
                # is the latest epoch within `tol` of the final best (one stored copy suffices).
                if score > best_score:
                    best_score = score
                    if rule == "stderr":  # the noise of the best epoch's own estimate
                        tol = stderr + 1e-9
                if score >= best_score - tol:
                    chosen_score, best_epoch = score, epoch
                    best_state = {n: p.detach().clone() for n, p in named}
            if step >= total:
                break
    if best_state is not None:
        with torch.no_grad():
            for n, p in named:
                p.copy_(best_state[n])
    model.eval()
    return {
        "steps": step,
        "best_epoch": best_epoch,  # the selected epoch (see select_tolerance)
        "best_dev_score": None if chosen_score == -math.inf else chosen_score,
        "max_dev_score": None if best_score == -math.inf else best_score,
        "select_tolerance": tol,
        "history": history,
        "seconds": time.monotonic() - start,
        "seconds_per_step": round((time.monotonic() - start) / max(1, step), 4),
        "precision": precision_of(lm.device),
    }
