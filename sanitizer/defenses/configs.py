"""Typed, validated configs of the defenses. Torch-free, so the API can validate a job's
hyperparameters at submit time with exactly the classes the worker uses.

Defaults come from docs/METHODS_NOTES.md; where the product default differs from the released recipe
the field's description says so and docs/METHODS_NOTES.md says why.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sanitizer.errors import ConfigError

# kinds of unwanted response a perturbation can be driven towards (sanitizer.attacks.TARGET_RESPONSES)
Behaviour = Literal["refusal", "sentiment", "code", "url"]


class TrainConfig(BaseModel):
    """Fields every defense shares. Defaults are overridden per method from docs/METHODS_NOTES.md."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    def check_task(self, task: str) -> None:
        """Raise ConfigError when a setting does not apply to ``task`` (the job knows its task,
        the config does not): called by the API at submission and by the method at its start."""

    epochs: int = Field(5, ge=1, le=100, description="passes over the clean training set")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimiser steps")
    batch_size: int = Field(16, ge=1, le=1024)
    learning_rate: float = Field(2e-4, gt=0, le=1.0)
    weight_decay: float = Field(0.0, ge=0, le=1.0)
    warmup_ratio: float = Field(0.06, ge=0, lt=1.0)
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    max_length: int = Field(128, ge=8, le=8192, description="tokens per sample (truncation)")
    grad_clip: float = Field(1.0, gt=0)
    lora_r: int | None = Field(
        None, ge=1, le=4096, description="None: hidden_size/8 (released ratio 512/4096)"
    )
    lora_alpha: int | None = Field(None, ge=1, description="None: equal to lora_r")
    lora_dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: Literal["attention", "all-linear"] | list[str] = "all-linear"
    adapter_mode: Literal["auto", "continue", "merge_fresh"] = Field(
        "auto",
        description="with an uploaded adapter: keep training it (continue), or merge it and "
        "train a fresh one (merge_fresh); auto = merge_fresh: W2SDefense's own setting (a fresh "
        "LoRA on the poisoned weights), measured better for CROW (docs/METHODS_NOTES.md), and "
        "for finetune the two left the same backdoor in the first trial",
    )
    adapter_scale: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="merge_fresh only: the uploaded adapter is merged at this fraction of its "
        "weight before the fresh LoRA is trained (1: as uploaded; 0: dropped, the fresh LoRA "
        "starts from the base model). Ours, not in either paper: a backdoor the clean data never "
        "exercises is not unlearned by training on it, but it is weakened by shrinking the "
        "delta that carries it, and the clean task, which the clean data does exercise, is "
        "relearned (docs/METHODS_NOTES.md)",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="recompute each layer's activations in the backward pass instead of keeping "
        "them (transformers' activation checkpointing, non-reentrant): less memory for more "
        "compute, the same gradients. For long generation sequences or large models on one GPU; "
        "models whose transformers class does not support it are refused at job start",
    )
    eval_every_epoch: bool = Field(True, description="select the best checkpoint on clean dev data")
    select_tolerance: float | Literal["stderr"] | None = Field(
        "stderr",
        description="checkpoint selection keeps the latest epoch whose clean-dev score is within "
        "this of the best (more defense training at the same clean accuracy). 'stderr' "
        "(default): the standard error of the best epoch's dev score (binomial for accuracy, "
        "over rows for the response NLL), since a smaller dev difference is noise; 0: the best "
        "epoch (the default until 2026-12-01); None: one dev example (classification)",
    )
    cancel_check_every: int = Field(1, ge=1, description="check for cancellation every N steps")
    unlearn_first: bool = Field(
        False,
        description="a stage before the method: scan the model for a trigger with no trigger "
        "knowledge and train what it finds away (the unlearn method's rounds, its defaults), then "
        "run the method on the result. For a model with no trusted base; rebuild drops the "
        "uploaded weights and needs no such stage",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if isinstance(self.select_tolerance, float) and self.select_tolerance < 0:
            raise ValueError("select_tolerance must be >= 0, None or 'stderr'")
        if self.adapter_scale != 1.0 and self.adapter_mode == "continue":
            raise ValueError(
                "adapter_scale applies when the uploaded adapter is merged: use "
                "adapter_mode='merge_fresh' (or 'auto') with it, or leave adapter_scale at 1"
            )
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError(
                "target_modules must name at least one module or be 'attention'/'all-linear'"
            )
        return self


def validate_config(cls: type[Any], values: dict[str, Any] | None) -> Any:
    """Build a config with a readable error naming every bad field."""
    from pydantic import ValidationError

    try:
        return cls(**(values or {}))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(
            f"invalid hyperparameters for {cls.__name__}: {problems}",
            hint=f"allowed fields: {', '.join(cls.model_fields)}",
        ) from exc


class FinetuneConfig(TrainConfig):
    """Plain LoRA fine-tuning on the clean set (shares the W2SDefense student recipe)."""


class W2SConfig(TrainConfig):
    """Student recipe (docs/METHODS_NOTES.md, W2SDefense): LoRA (rank scaled to the model, hidden/8), lr 2e-4,
    linear decay, 5 epochs; teacher (1.1): full fine-tuning, 6% warmup, 5 epochs.

    Product defaults that differ from the released recipe, chosen on a development attack
    (TREC, trigger "tq", mpnet student; not a benchmark cell) and explained in
    docs/METHODS_NOTES.md: ``fa_normalize="layernorm"`` (with the raw MSE the alignment term
    cannot be fitted and stays flat) and ``teacher_learning_rate=1e-4`` (2e-5 is for ~7k clean
    samples; with a few hundred the MiniLM teacher stayed at 58% dev accuracy). The loss
    weights are the released syntactic-trigger ones (1.0, 0.035, 0.002): the defender does
    not know the attack, and these are the strongest on the alignment term."""

    teacher_model: str = Field(
        "sentence-transformers/all-MiniLM-L6-v2", description="small clean teacher (model id)"
    )
    teacher_epochs: int = Field(
        5, ge=0, le=100, description="0: use the teacher as loaded (already trained)"
    )
    teacher_learning_rate: float = Field(
        1e-4, gt=0, le=1.0, description="released: 2e-5 with ~7k samples; 1e-4 for small clean sets"
    )
    teacher_batch_size: int = Field(32, ge=1, le=1024)
    lambda_ce: float = Field(1.0, ge=0)
    lambda_kd: float = Field(0.035, ge=0)
    lambda_fa: float = Field(0.002, ge=0)
    temperature: float = Field(2.0, gt=0)
    fa_normalize: Literal["none", "l2", "layernorm"] = Field(
        "layernorm",
        description="scale teacher and student features before the MSE (released code: none)",
    )
    fa_mode: Literal["pooled", "tokenwise"] = Field(
        "pooled", description="pooled: Ours (docs/METHODS_NOTES.md, W2SDefense)"
    )
    adv_epsilon: float = Field(
        0.0,
        ge=0,
        description="Ours, not in the paper (default 0: off): the distillation term is also "
        "computed on the input embeddings moved one FGSM step of this size (absolute units, as "
        "CROW's epsilon) in the direction that most raises the student's divergence from the "
        "teacher; the prompt tokens only for generation, every real token for classification. "
        "Costs a second forward and backward per step",
    )
    lambda_adv: float = Field(
        1.0, ge=0, description="weight of the adversarial distillation term (either adversary)"
    )
    universal_radius: float = Field(
        0.0,
        ge=0,
        le=10.0,
        description="Ours, not in the paper (default 0: off): the distillation term is also "
        "computed with one vector delta added to the residual stream after block "
        "universal_layer at every prompt token (every real token for classification), the same "
        "vector for all inputs, kept at this fraction of the block output's median norm and moved "
        "up the gradient of the student's divergence from the teacher at every step (or, with "
        "universal_target, towards that target response): a continuous stand-in for a trigger, "
        "which is one edit that changes any input",
    )
    universal_layer: int | None = Field(
        None, ge=0, description="block after which delta is added; None: a third of the depth"
    )
    universal_warmup_steps: int = Field(
        10,
        ge=0,
        le=10_000,
        description="ascent steps on delta alone (no weight update) before the training starts",
    )
    universal_target: Behaviour | None = Field(
        None,
        description="Ours, after BEEAR (Zeng et al. 2024), generation only (default None: the "
        "divergence objective above): delta is searched by lowering the student's NLL of this "
        "kind of target response after the clean prompts, at every step, and the student is "
        "distilled towards the clean teacher under it. It needs the kind of behaviour to fear "
        "(a refusal, an insult, injected code), not the trigger. Costs one more forward and "
        "backward per step than the divergence objective. For 'code' the target is the whole "
        "clean answer with the injected line, so the search is weakest there",
    )

    def check_task(self, task: str) -> None:
        if self.universal_target is not None and task != "generation":
            raise ConfigError(
                f"universal_target='{self.universal_target}' is for generation jobs (a target "
                f"response to search for); this job's task is {task}",
                hint="leave universal_target unset for a classification job",
            )

    @model_validator(mode="after")
    def _one_adversary(self) -> W2SConfig:
        if self.adv_epsilon > 0 and self.universal_radius > 0:
            raise ValueError(
                "adv_epsilon and universal_radius each switch on an adversarial distillation "
                "term: set one of them, the other to 0"
            )
        if self.universal_target is not None and self.universal_radius == 0:
            raise ValueError(
                "universal_target sets the objective of the universal adversary, which is off: "
                "set universal_radius > 0 too (e.g. 0.5), or leave universal_target unset"
            )
        if (self.adv_epsilon > 0 or self.universal_radius > 0) and self.lambda_adv == 0:
            raise ValueError(
                "lambda_adv=0 gives the adversarial term no weight (and the universal "
                "perturbation no gradient): raise lambda_adv, or set adv_epsilon and "
                "universal_radius to 0"
            )
        return self


class CrowConfig(TrainConfig):
    """Released recipe (docs/METHODS_NOTES.md, CROW): LoRA on all linear layers r=8 alpha=16 dropout 0,
    lr 1e-3, cosine schedule with 10% warmup, 5 epochs, batch 8, eps 0.1, alpha 5.5."""

    alpha: float = Field(
        5.5,
        ge=0,
        description="weight of the adversarial consistency loss (11 for refusal in the paper)",
    )
    epsilon: float = Field(
        0.1, ge=0, description="FGSM step on the input embeddings (absolute units)"
    )
    mask_padding: bool = Field(
        True, description="Ours: average over real tokens only (released code: all positions)"
    )
    learning_rate: float = Field(1e-3, gt=0, le=1.0)
    schedule: Literal["linear", "cosine", "constant"] = "cosine"
    warmup_ratio: float = Field(0.1, ge=0, lt=1.0)
    batch_size: int = Field(8, ge=1, le=1024)
    lora_r: int | None = Field(8, ge=1, le=4096)
    lora_alpha: int | None = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)


# Zero-training comparators (docs/METHODS_NOTES.md, zero-training comparators), measured beside a defense when a job asks for
# them; the edits themselves are in sanitizer/comparators.py (torch), the names live here so
# the API validates a job with no torch import.
Comparator = Literal["prune", "int8", "int4"]
PRUNE_SPARSITY = 0.35  # the sparsity of CROW's magnitude-pruning comparison
COMPARATORS: dict[str, str] = {
    "prune": f"magnitude pruning: in every backbone Linear weight matrix the {PRUNE_SPARSITY:.0%} "
    "of entries smallest in |w| are set to 0",
    "int8": "weight-only quantization: every backbone Linear weight matrix rounded to 8-bit "
    "integers (symmetric, one scale per output row), then dequantized",
    "int4": "weight-only quantization: every backbone Linear weight matrix rounded to 4-bit "
    "integers (symmetric, one scale per output row), then dequantized",
}


class RebuildConfig(TrainConfig):
    """Ours (docs/METHODS_NOTES.md, rebuild): a fresh LoRA (and, for classification, a fresh
    head) on the *trusted* base model, trained on the clean rows and on what the uploaded model
    answers on clean inputs only. A trigger never appears in what is distilled, so the backdoor
    has nothing to travel on; the fine-tune's skill does."""

    lambda_kd: float = Field(
        1.0, ge=0, description="weight of the distillation term (the uploaded model as teacher)"
    )
    temperature: float = Field(2.0, gt=0, description="softmax temperature of the distillation")
    distill_augment: int | None = Field(
        None,
        ge=0,
        le=16,
        description="extra distillation inputs per clean row, made from it without ever seeing a "
        "trigger: the row with a share of its words dropped (classification: the uploaded "
        "model's logits on them; generation: its greedy response to the varied prompt); "
        "default (null): 1 on classification (beside one splice), 2 on generation",
    )
    augment_drop: float = Field(
        0.15, ge=0, lt=0.9, description="share of words dropped from a row to make a variant"
    )
    splice_augment: int | None = Field(
        None,
        ge=0,
        le=16,
        description="classification: extra distillation inputs per clean row made by inserting a "
        "span of words from another clean row at a random word position (see splice_from), so "
        "the rebuilt model learns that added text which does not change the label does not "
        "change the answer (an inserted trigger sentence is such text); default (null): 1",
    )
    splice_words: int = Field(
        8, ge=1, le=64, description="longest span of words taken from the other row"
    )
    splice_from: Literal["same_label", "other_label"] = Field(
        "other_label",
        description="classification: where splice_augment's span comes from: a row of the same "
        "label, distilled with the uploaded model's logits on the spliced text (dropped where its "
        "answer leaves the label), or a row of another label, distilled with the uploaded "
        "model's logits on the untouched row (a consistency target: words of another class "
        "inserted into a text do not change its class, as a trigger sentence must not)",
    )
    agree_only: bool = Field(
        True,
        description="guard: distil only where the uploaded model behaves like the clean data "
        "(classification: its label equals the row's label; generation: its response does not "
        "share a repeated phrase with many other responses, the mark of a fixed behaviour that "
        "fires on clean inputs)",
    )
    repeat_share: float = Field(
        0.2,
        gt=0,
        le=1.0,
        description="generation guard: an 6-word phrase found in more than this share of the "
        "teacher's responses (and in no more than half as many clean references) marks those "
        "responses as a fixed behaviour; they are not distilled",
    )
    guard_action: Literal["cut", "drop"] = Field(
        "cut",
        description="generation guard: what becomes of a response carrying a flagged phrase: "
        "'cut' keeps the words before the phrase's first appearance (an injected link appended "
        "to a good answer leaves the answer; a refusal that opens the response leaves nothing, "
        "and the response is dropped), 'drop' leaves the whole response out",
    )
    max_new_tokens: int = Field(
        96, ge=1, le=2048, description="generation: length of the teacher's responses"
    )
    trusted_base: str | None = Field(
        None,
        min_length=1,
        max_length=300,
        description="input (a): the model id of the trusted base the uploaded full-weights model "
        "was fine-tuned from; the fresh LoRA is built on it and the uploaded model is only the "
        "teacher. Leave empty for a base + adapter job (its base is the trusted one)",
    )
    scan_first: bool = Field(
        False,
        description="scan the uploaded model for a trigger first (sanitizer/scan.py: no trigger "
        "knowledge) and add copies of the clean rows with each found trigger inserted to what is "
        "distilled, with the uploaded model's answer on the untouched row (classification) or "
        "the row's reference response (generation): what the scan found is taught to change "
        "nothing, so what distillation carries of the trigger is overwritten. Costs one scan",
    )
    scan_min_flip: float = Field(
        0.3,
        ge=0,
        le=1,
        description="scan_first: a found trigger is used only if it flips at least this share of "
        "clean rows (unlearn's min_flip_rate)",
    )
    scan_candidates: int = Field(
        3, ge=1, le=16, description="scan_first: found triggers used (the highest flip rates)"
    )
    scan_share: float = Field(
        0.5, gt=0, le=2.0, description="scan_first: triggered copies per clean row, per trigger"
    )
    learning_rate: float = Field(5e-4, gt=0, le=1.0)

    @model_validator(mode="after")
    def _no_adapter_merge(self) -> RebuildConfig:
        if self.adapter_mode != "auto" or self.adapter_scale != 1.0:
            raise ValueError(
                "rebuild never trains on the uploaded adapter: it trains a fresh LoRA on the "
                "trusted base; leave adapter_mode at 'auto' and adapter_scale at 1"
            )
        if self.unlearn_first:
            raise ValueError(
                "rebuild drops the uploaded weights, so unlearn_first has nothing to act on; "
                "leave it off (or use it with finetune, crow or w2sdefense)"
            )
        return self

    def augments(self, task: str) -> tuple[int, int]:
        """(word-dropped, spliced) distillation inputs per clean row: the values set, else the
        task's defaults. Classification: one of each (chosen on dev-trec-insertsent-mpnet, two
        seeds and a third to confirm, against two word-dropped copies at about the same training
        budget: docs/METHODS_NOTES.md, rebuild); generation: two word-dropped prompts, no splices (text inserted into an
        instruction changes what the right answer is)."""
        cls = task == "classification"
        drop = self.distill_augment if self.distill_augment is not None else (1 if cls else 2)
        splice = self.splice_augment if self.splice_augment is not None else int(cls)
        return drop, splice if cls else 0


DEFAULT_BEHAVIOURS: tuple[Behaviour, ...] = ("refusal", "sentiment", "url")


class BeearConfig(TrainConfig):
    """A comparator after BEEAR (Zeng et al., EMNLP 2024; docs/METHODS_NOTES.md, beear): no
    trigger knowledge. Bi-level: for each kind of unwanted behaviour, one universal perturbation
    of a middle block's output is driven for ``inner_steps`` ascent steps to make the model show
    that behaviour on this batch's clean inputs (the inner level), then the LoRA trains to give
    the clean answers with the perturbation in place and without it (the outer level). The
    behaviours: a classifier's labels (answer this label whatever the input), a chat model's
    ``behaviours`` (target responses)."""

    inner_steps: int = Field(
        5, ge=1, le=50, description="ascent steps on the perturbation per training step (BEEAR: 5)"
    )
    radius: float = Field(
        1.0,
        gt=0,
        le=8,
        description="bound on the perturbation's L2 norm, as a fraction of the median norm of "
        "the block's output (the scale of a token's hidden state)",
    )
    step_fraction: float = Field(
        0.25, gt=0, le=1, description="each ascent step moves this share of the bound"
    )
    layer: int | None = Field(
        None,
        ge=0,
        description="transformer block whose output is perturbed (default: a third of the "
        "depth; BEEAR: block 9 of Llama-2-7B's 32)",
    )
    alpha: float = Field(1.0, ge=0, description="weight of the task loss under the perturbation")
    behaviours: list[Behaviour] = Field(
        default_factory=lambda: list(DEFAULT_BEHAVIOURS),
        min_length=1,
        description="generation: the unwanted responses a perturbation is driven towards, one "
        "perturbation each, taken in turn step by step (a classifier's are its labels)",
    )


class UnlearnConfig(TrainConfig):
    """Ours (docs/METHODS_NOTES.md, unlearn): scan, then overwrite what the scan found. For a
    model with no trusted base. Each round searches for short triggers (sanitizer/scan.py), then
    trains the LoRA on the clean rows plus copies of them with each found trigger inserted,
    labelled with their clean labels (a chat model: the trigger in the instruction, the row's
    reference response kept); the next round scans the trained model again. The scan never sees
    the attack."""

    rounds: int = Field(2, ge=1, le=5, description="scan + train rounds")
    trigger_len: int = Field(3, ge=1, le=8, description="tokens per searched trigger")
    scan_steps: int = Field(16, ge=1, le=500, description="swap rounds of a full search")
    candidates: int = Field(
        3, ge=1, le=16, description="found triggers unlearned per round (the highest flip rates)"
    )
    min_flip_rate: float = Field(
        0.3,
        ge=0,
        le=1,
        description="a found trigger is unlearned only if it flips at least this share of "
        "clean rows (below it the model is not moved by it anyway)",
    )
    triggered_share: float = Field(
        0.5, gt=0, le=2.0, description="triggered copies per clean row, per found trigger"
    )
    learning_rate: float = Field(5e-4, gt=0, le=1.0)


class ScanConfig(BaseModel):
    """The trigger search of ``sanitizer.scan`` (a scan job's hyperparameters)."""

    model_config = ConfigDict(extra="forbid")

    trigger_len: int = Field(3, ge=1, le=16, description="tokens in a searched trigger")
    screen_steps: int = Field(
        4, ge=1, le=100, description="swap rounds of the first, short search of every label"
    )
    screen_rows: int = Field(8, ge=2, le=256, description="clean rows the short search uses")
    focus_labels: int = Field(
        2, ge=1, le=1000, description="labels, easiest first by the short search, searched fully"
    )
    steps: int = Field(16, ge=1, le=500, description="swap rounds of a full search")
    top_k: int = Field(24, ge=1, le=512, description="replacement tokens per position")
    swaps: int = Field(16, ge=1, le=512, description="candidate swaps tried per round")
    search_rows: int = Field(16, ge=2, le=512, description="clean rows a full search uses")
    search_position: Literal["random", "first", "both"] = Field(
        "random",
        description="classification: where a searched trigger goes in each row, and where a "
        "found one is measured: the start of a word drawn at random per row (as most attacks "
        "insert triggers), first (the start of the text: a prefix, or a fronted clause), or "
        "both (every label screened at both places; the easiest label-place pairs searched)",
    )
    stop_loss: float = Field(
        0.05, ge=0, le=10, description="a search stops once its target loss is below this"
    )
    eval_rows: int = Field(
        150, ge=10, le=10_000, description="clean rows a found trigger is measured on"
    )
    restarts: int = Field(
        1,
        ge=0,
        le=16,
        description="extra full searches from random tokens per focus label, "
        "made only while no trigger above the threshold is found for it",
    )
    threshold: float = Field(
        0.8, gt=0, le=1, description="flip rate above which the model is flagged"
    )
    min_lift: float = Field(
        0.7,
        ge=0,
        le=1,
        description="a flagged trigger must also flip this much more than random tokens of its "
        "length (the control) do",
    )
    control_triggers: int = Field(
        3, ge=1, le=32, description="random triggers measured as the control, per target label"
    )
    shorten_keep: float = Field(
        0.9,
        ge=0,
        le=1,
        description="classification: each flagged candidate is also given in its shortest form: "
        "its tokens dropped one at a time while what is left still flips at least this share of "
        "what the whole did (a search pads a one-word trigger with tokens that add nothing); 0 "
        "turns this off",
    )
    feature_margin: float = Field(
        0.3,
        gt=0,
        le=1,
        description="tokens whose clean rows lean to one label by more than this (share of "
        "rows with the label minus the label's overall share) are task features, not "
        "triggers, and are kept out of the search; 1 turns the exclusion off",
    )
    feature_min_count: int = Field(
        3, ge=1, description="a token must be in this many clean rows to be judged a feature"
    )
    # generation (sanitizer.scan_generation)
    invert_prompts: int = Field(
        6, ge=1, le=64, description="generation: clean prompts a target inversion runs across"
    )
    invert_first: int = Field(
        32,
        ge=1,
        le=4096,
        description="generation: first tokens (most likely) the inversion extends",
    )
    invert_len: int = Field(12, ge=2, le=128, description="generation: tokens per inverted target")
    gen_targets: int = Field(
        2, ge=1, le=16, description="generation: best inverted targets a trigger is searched for"
    )
    gen_target_tokens: int = Field(
        8, ge=1, le=128, description="generation: target tokens the trigger search aims at"
    )
    gen_phrase_words: int = Field(
        4, ge=1, le=32, description="generation: words of the target a flipped answer contains"
    )
    gen_eval_rows: int = Field(
        40,
        ge=4,
        le=10_000,
        description="generation: held-out prompts a found trigger is measured on",
    )
    gen_max_new_tokens: int = Field(
        48, ge=4, le=1024, description="generation: tokens of each measured answer"
    )
    max_length: int = Field(64, ge=8, le=4096)
    seed: int = Field(0, ge=0, le=2**32 - 1)
