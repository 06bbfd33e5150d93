"""W2SDefense's small clean teacher, trained with full fine-tuning on the clean set: for classification an encoder with a projection to the student's width, for generation a small causal LM."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sanitizer.defenses.batching import Batch, make_batch
from sanitizer.defenses.common import (
    CancelFn,
    ProgressFn,
    TrainConfig,
    task_loss,
    train,
)
from sanitizer.defenses.configs import W2SConfig
from sanitizer.errors import ConfigError
from sanitizer.models import LoadedModel, load_model, load_tokenizer


class ClassificationTeacher(nn.Module):
    """Encoder + ``z = ReLU(W_p h_CLS + b_p)`` (student width) + linear classifier."""

    def __init__(self, encoder: nn.Module, teacher_width: int, student_width: int, num_labels: int):
        super().__init__()
        self.encoder = encoder
        self.proj = nn.Linear(teacher_width, student_width)
        self.head = nn.Linear(student_width, num_labels)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        z = F.relu(self.proj(h))
        return z, self.head(z)


def train_teacher(
    holder: LoadedModel,
    train_rows: Sequence[Any],
    dev_rows: Sequence[Any],
    cfg: W2SConfig,
    batch_size: int,
    progress: ProgressFn | None,
    should_cancel: CancelFn | None,
    checkpointing: bool = False,
) -> dict[str, Any]:
    """Full fine-tuning of the teacher on the clean set (task loss), best clean-dev epoch kept.
    ``checkpointing``: activation checkpointing (the generation teacher, a full causal LM)."""
    if cfg.teacher_epochs == 0:
        return {}
    tcfg = TrainConfig(
        epochs=cfg.teacher_epochs,
        batch_size=batch_size,
        learning_rate=cfg.teacher_learning_rate,
        warmup_ratio=0.06,
        schedule="linear",
        max_length=cfg.max_length,
        seed=cfg.seed,
        cancel_check_every=cfg.cancel_check_every,
        select_tolerance=0.0,  # the teacher is simply the most accurate epoch
        gradient_checkpointing=checkpointing,
    )

    def teacher_step(
        lm: LoadedModel, batch: Batch, rows: Sequence[Any]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        out = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        loss = task_loss(lm, out, batch)
        return loss, {"teacher_ce": float(loss.detach())}

    return train(
        holder,
        train_rows,
        dev_rows,
        tcfg,
        teacher_step,
        phase="teacher",
        progress=progress,
        should_cancel=should_cancel,
    )


def train_classification_teacher(
    student: LoadedModel,
    train_rows: Sequence[Any],
    dev_rows: Sequence[Any],
    cfg: W2SConfig,
    progress: ProgressFn | None,
    should_cancel: CancelFn | None,
) -> tuple[LoadedModel, ClassificationTeacher, dict[str, Any]]:
    from transformers import AutoModel

    from sanitizer.hub import resolve_model

    model_dir = resolve_model(cfg.teacher_model)
    encoder = AutoModel.from_pretrained(model_dir, trust_remote_code=False, use_safetensors=True)
    if getattr(encoder.config, "is_decoder", False) or "CausalLM" in " ".join(
        encoder.config.architectures or []
    ):
        raise ConfigError(
            f"teacher '{cfg.teacher_model}' is a decoder; classification teachers are encoders",
            hint="use e.g. sentence-transformers/all-MiniLM-L6-v2",
        )
    teacher = ClassificationTeacher(
        encoder, encoder.config.hidden_size, student.hidden_size, int(student.num_labels or 2)
    ).to(student.device)
    holder = LoadedModel(
        model=_TeacherAsClassifier(teacher),
        tokenizer=load_tokenizer(model_dir, is_decoder=False),
        task="classification",
        model_id=cfg.teacher_model,
        model_dir=model_dir,
        is_decoder=False,
        template=student.template,
        device=student.device,
        num_labels=student.num_labels,
    )
    stats: dict[str, Any] = {
        "teacher_model": cfg.teacher_model,
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
    }
    stats.update(
        train_teacher(
            holder, train_rows, dev_rows, cfg, cfg.teacher_batch_size, progress, should_cancel
        )
    )
    teacher.eval().requires_grad_(False)
    return holder, teacher, stats


class _TeacherAsClassifier(nn.Module):
    """Adapter so the generic loop and dev scoring can call the teacher like an HF model."""

    def __init__(self, teacher: ClassificationTeacher):
        super().__init__()
        self.teacher = teacher

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any):
        _, logits = self.teacher(input_ids, attention_mask)
        return type("Out", (), {"logits": logits})()


@torch.no_grad()
def teacher_targets(
    holder: LoadedModel, teacher: ClassificationTeacher, rows: Sequence[Any], max_length: int
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for i in range(0, len(rows), 64):
        chunk = rows[i : i + 64]
        batch = make_batch(holder, chunk, max_length)
        z, logits = teacher(batch["input_ids"], batch["attention_mask"])
        for row, zi, li in zip(chunk, z, logits, strict=True):
            cache[row.text] = (zi, li)
    return cache


def train_generation_teacher(
    student: LoadedModel, cfg: W2SConfig, train_rows, dev_rows, progress, should_cancel
):
    holder = load_model(cfg.teacher_model, "generation", device=student.device)
    if holder.tokenizer.get_vocab() != student.tokenizer.get_vocab():
        raise ConfigError(
            f"teacher '{cfg.teacher_model}' does not share the student's tokenizer",
            hint="for generation the teacher must be a causal LM of the same family (same vocabulary)",
        )
    holder.template = student.template
    stats: dict[str, Any] = {"teacher_model": cfg.teacher_model}
    stats.update(
        train_teacher(
            holder,
            train_rows,
            dev_rows,
            cfg,
            cfg.batch_size,
            progress,
            should_cancel,
            checkpointing=cfg.gradient_checkpointing,
        )
    )
    holder.model.eval().requires_grad_(False)
    return holder, stats
