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

from sanitizer.defenses.batching import Batch, iterate_batches, make_batch
from sanitizer.defenses.configs import TrainConfig, validate_config  # noqa: F401  (re-exported)
from sanitizer.defenses.dev_eval import dev_stats
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


# ---------------------------------------------------------------- adversarial input step


# ---------------------------------------------------------------- universal perturbation


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
    """Warmup, then linear / cosine decay or constant. Not ``transformers.get_scheduler``: its
    warmup starts at lr 0 (step 0 trains nothing) where this one starts at 1/warm, so the curve
    differs by one step, and every recorded result was trained with this one."""
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
