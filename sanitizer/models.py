"""Model I/O: load a base model (and optionally a PEFT adapter), attach LoRA, save adapters.

Rules this module enforces:
- weights are read from safetensors only; pickle-format files are refused (sanitizer.safety);
- ``trust_remote_code`` is never enabled; nothing is downloaded (the hub runs offline);
- the prompt template is part of the loaded model and is used for training *and* evaluation.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from sanitizer.adapter_files import file_hashes, sha256_of_dir  # noqa: E402
from sanitizer.errors import ConfigError, InputError  # noqa: E402
from sanitizer.hub import resolve_model  # noqa: E402

Task = Literal["classification", "generation"]
AdapterMode = Literal["auto", "continue", "merge_fresh"]

# Head modules that stay fully trainable (PEFT ``modules_to_save``) for classification.
_HEAD_NAMES = ("classifier", "score", "pre_classifier")
CLASSIFICATION_TEMPLATE = "{text}"


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def select_device(preference: str = "auto") -> torch.device:
    """``auto`` picks cuda > mps > cpu; anything else is passed to torch.device as given."""
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(preference)
    except RuntimeError as exc:
        raise ConfigError(
            f"unknown device '{preference}'", hint="use auto, cpu, cuda or cuda:N"
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' was asked for but no GPU is visible", hint="use device=auto"
        )
    return device


@dataclass
class PromptTemplate:
    """How a sample becomes model input. Stored in every report."""

    kind: Literal["plain", "chat"]
    text: str  # human-readable description (the format string or the chat template source)

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "template": self.text}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    task: Task
    model_id: str
    model_dir: Path
    is_decoder: bool
    template: PromptTemplate
    device: torch.device
    num_labels: int | None = None
    adapter_info: dict[str, Any] = field(default_factory=dict)

    @property
    def hidden_size(self) -> int:
        cfg: Any = self.model.config
        return int(getattr(cfg, "hidden_size", None) or cfg.d_model)

    def prompt(self, instruction: str, input_text: str = "") -> str:
        """The generation prompt in the model's own template (chat template when it has one)."""
        user = instruction if not input_text else f"{instruction}\n\n{input_text}"
        if self.template.kind == "chat":
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
            )
        return self.template.text.format(instruction=user)


ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


def load_tokenizer(model_dir: Path, is_decoder: bool):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    if tok.pad_token is None:
        tok.pad_token = (
            tok.eos_token
        )  # decoders without a pad token (docs/METHODS_NOTES.md, W2SDefense)
    if is_decoder:
        tok.padding_side = "left"
    return tok


def _is_decoder(config) -> bool:
    archs = " ".join(getattr(config, "architectures", None) or [])
    return (
        bool(getattr(config, "is_decoder", False))
        or "CausalLM" in archs
        or config.model_type
        in {
            "llama",
            "mistral",
            "qwen2",
            "gpt2",
            "gpt_neox",
            "phi",
            "gemma",
        }
    )


def load_model(
    model_id: str,
    task: Task,
    *,
    num_labels: int | None = None,
    revision: str | None = None,
    device: str | torch.device = "auto",
) -> LoadedModel:
    """Load a base model for ``task`` from the local model store (never the network)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    _quiet_transformers()
    model_dir = resolve_model(model_id, revision)
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=False)
    decoder = _is_decoder(config)
    tok = load_tokenizer(model_dir, decoder)
    dev = device if isinstance(device, torch.device) else select_device(device)
    if task == "classification":
        if not num_labels or num_labels < 2:
            raise ConfigError("classification needs num_labels >= 2")
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir,
            num_labels=num_labels,
            trust_remote_code=False,
            use_safetensors=True,
            pad_token_id=tok.pad_token_id,
        )
        model.config.pad_token_id = tok.pad_token_id
        template = PromptTemplate("plain", CLASSIFICATION_TEMPLATE)
    elif task == "generation":
        if not decoder:
            raise InputError(
                f"'{model_id}' is an encoder; generation tasks need a decoder (causal LM)",
                hint="use task=classification or a causal LM base model",
            )
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, trust_remote_code=False, use_safetensors=True
        )
        if getattr(tok, "chat_template", None):
            template = PromptTemplate("chat", tok.chat_template)
        else:
            template = PromptTemplate("plain", ALPACA_TEMPLATE)
    else:
        raise ConfigError(f"unknown task '{task}'", hint="use classification or generation")
    model.to(dev)
    return LoadedModel(
        model=model,
        tokenizer=tok,
        task=task,
        model_id=model_id,
        model_dir=model_dir,
        is_decoder=decoder,
        template=template,
        device=dev,
        num_labels=num_labels,
    )


def is_head_module(name_parts: list[str]) -> bool:
    """Whether a module (its dotted name, split) belongs to a head: the classifier/score
    layers or ``lm_head``, which LoRA never wraps and the comparators never edit. Any part
    counts, so the names inside a PEFT wrapper (``base_model.model.classifier...``) match."""
    return any(p in _HEAD_NAMES or p == "lm_head" for p in name_parts)


def linear_module_names(model: nn.Module, scope: str = "all-linear") -> list[str]:
    """Leaf names of the Linear layers LoRA should wrap.

    ``attention``: query/key/value projections only; ``all-linear``: every Linear layer of
    the backbone. Heads (classifier, score, lm_head) are never wrapped: they are trained
    whole (classification) or frozen (generation).
    """
    attention = {"q_proj", "k_proj", "v_proj", "query", "key", "value", "q", "k", "v"}
    names: set[str] = set()
    for full, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        parts = full.split(".")
        if is_head_module(parts):
            continue
        leaf = parts[-1]
        if scope == "attention" and leaf not in attention:
            continue
        names.add(leaf)
    if not names:
        raise ConfigError(f"no Linear layers match target scope '{scope}'")
    return sorted(names)


def default_rank(hidden_size: int) -> int:
    """The released W2SDefense recipe uses r=512 on a 4096-wide model: r = hidden/8, at least 8."""
    return max(8, hidden_size // 8)


def add_lora(
    lm: LoadedModel,
    *,
    r: int,
    alpha: int,
    dropout: float,
    target: str | list[str] = "all-linear",
) -> None:
    """Wrap ``lm.model`` in a fresh LoRA adapter (in place)."""
    from peft import LoraConfig, TaskType, get_peft_model

    if isinstance(target, str):
        targets = linear_module_names(lm.model, target)
    else:
        targets = list(target)
        available = linear_module_names(lm.model, "all-linear")
        unknown = [t for t in targets if t not in available]
        if unknown:
            raise ConfigError(
                f"target_modules {unknown} name no Linear layer of {lm.model_id}",
                hint=f"its layers are: {', '.join(available)} "
                "(or use target_modules='attention' / 'all-linear')",
            )
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        task_type=TaskType.SEQ_CLS if lm.task == "classification" else TaskType.CAUSAL_LM,
        base_model_name_or_path=lm.model_id,
    )
    lm.model = get_peft_model(lm.model, cfg)


def attach_adapter(lm: LoadedModel, adapter_dir: Path, *, trainable: bool = False) -> None:
    """Put an uploaded adapter on ``lm`` unmerged (a ``PeftModel``): the model as uploaded.
    Checked first (safetensors only, the base it names); ``trainable`` keeps its LoRA weights
    trainable, for ``continue``."""
    from peft import PeftModel

    from sanitizer.safety import check_adapter_dir

    info = check_adapter_dir(Path(adapter_dir), expected_base_model=lm.model_id)
    lm.model = PeftModel.from_pretrained(
        lm.model, adapter_dir, is_trainable=trainable, use_safetensors=True
    )
    lm.adapter_info = {
        "sha256": sha256_of_dir(Path(adapter_dir)),
        "r": getattr(info, "r", None),
        "target_modules": getattr(info, "target_modules", None),
    }
    lm.model.to(lm.device)


def merge_adapter(lm: LoadedModel, scale: float = 1.0) -> None:
    """Merge the adapter ``attach_adapter`` put on ``lm`` into the base weights.

    ``scale`` multiplies every LoRA delta ``B A`` before the merge; whole modules the adapter
    saved (a classifier head, which has no base value to shrink towards) are kept as they are."""
    from peft.tuners.lora import LoraLayer

    if scale != 1.0:
        for module in lm.model.modules():
            if isinstance(module, LoraLayer):
                module.scale_layer(scale)
        lm.adapter_info["scale"] = scale
    lm.model = lm.model.merge_and_unload()  # merged in place: already on lm.device


def load_adapter(lm: LoadedModel, adapter_dir: Path, mode: AdapterMode, scale: float = 1.0) -> None:
    """Put an uploaded adapter on ``lm``: keep it trainable (``continue``) or merge it into the
    base weights at ``scale`` (``merge_fresh``; a fresh LoRA is added afterwards by the caller).
    ``attach_adapter`` then ``merge_adapter``, for callers that need nothing in between."""
    if scale != 1.0 and mode == "continue":
        raise ConfigError(
            "an adapter can only be scaled when it is merged",
            hint="use adapter_mode='merge_fresh' with adapter_scale, or leave adapter_scale at 1",
        )
    attach_adapter(lm, adapter_dir, trainable=(mode == "continue"))
    if mode == "merge_fresh":
        merge_adapter(lm, scale)


def save_adapter(
    lm: LoadedModel, out_dir: Path, label_names: list[str] | None = None
) -> dict[str, str]:
    """Write the adapter as safetensors (never pickle), with a model card naming the base
    model by id and, for classification, the label names. Returns sha256 per written file."""
    from sanitizer import model_card

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(out_dir, safe_serialization=True)
    cfg_path = out_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = lm.model_id
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    meta: dict[str, Any] = {
        "task": lm.task,
        "num_labels": lm.num_labels,
        "prompt_template": lm.template.to_dict(),
    }
    if label_names:
        meta["id2label"] = {str(i): n for i, n in enumerate(label_names)}
        meta["label2id"] = {n: i for i, n in enumerate(label_names)}
    (out_dir / "sanitizer_adapter.json").write_text(json.dumps(meta, indent=2))
    model_card.write(out_dir, lm.model_id, lm.task, label_names)  # replaces PEFT's template
    return file_hashes(out_dir)


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
