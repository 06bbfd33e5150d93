"""The three jobs the library offers, each one function: sanitize, attack, evaluate.

``run_sanitize`` is what the CLI's ``defend`` and the service's worker call: load the model
(and the uploaded adapter), measure, defend, measure again, write the sanitized adapter and
``report.json``.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sanitizer.attacks import AttackSpec
from sanitizer.data import load_dataset, split_dataset
from sanitizer.data_rows import Task
from sanitizer.defenses import registry
from sanitizer.errors import ConfigError, SanitizerError
from sanitizer.jobspec import JobSpec
from sanitizer.report_json import build_report, metrics_block, write_report
from sanitizer.runtime import peak_memory_mb, reset_peak_memory


def _load_data(path: Path, spec_like: Any, task: Task, label_names: list[str] | None):
    return load_dataset(
        path,
        task=task,
        text_column=getattr(spec_like, "text_column", "text"),
        label_column=getattr(spec_like, "label_column", "label"),
        label_names=label_names,
    )


def cap_rows(rows: list[Any], n: int | None, seed: int) -> list[Any]:
    if n is None or len(rows) <= n:
        return list(rows)
    picked = sorted(random.Random(seed).sample(range(len(rows)), n))
    return [rows[i] for i in picked]


def load_base(spec: JobSpec, num_labels: int | None):
    from sanitizer.models import load_model

    return load_model(
        spec.base_model,
        spec.task,
        num_labels=num_labels,
        revision=spec.base_revision,
        device=spec.device,
    )


def prepare_model(
    spec: JobSpec,
    cfg: Any,
    num_labels: int | None,
    on_uploaded: Callable[[Any], None] | None = None,
    start: str = "merged",
):
    """Base model (+ uploaded adapter, continued or merged) with the LoRA the defense trains.

    ``on_uploaded`` is called once with the model as the user gave it (base + uploaded adapter,
    unmerged and unscaled), before it becomes the defense's start: "before" is measured there,
    on the one model load of the job."""
    from sanitizer.defenses.common import check_checkpointing
    from sanitizer.models import add_lora, attach_adapter, default_rank, merge_adapter

    lm = load_base(spec, num_labels)
    if start == "uploaded":  # the method takes the model as uploaded and trains on the base
        if spec.adapter_dir is None and not getattr(cfg, "trusted_base", None):
            raise ConfigError(
                "this method needs a trusted base model",
                hint="give the base model id and the fine-tune as a PEFT adapter, or name the "
                "base a full-weights model was fine-tuned from (trusted_base=<model id>)",
            )
        if spec.adapter_dir is not None:
            attach_adapter(lm, spec.adapter_dir, trainable=False)
        if on_uploaded is not None:
            on_uploaded(lm)
        return lm, "rebuild"
    mode = cfg.adapter_mode
    if mode == "auto":
        # merge_fresh for every method: on the development attack CROW continuing the poisoned
        # adapter ended at ASR 0.265 (and rebounded to 0.66 by the last epoch), CROW on a fresh
        # LoRA over the merged weights at 0.025 (docs/METHODS_NOTES.md)
        mode = "merge_fresh"
    if spec.adapter_dir is not None:
        attach_adapter(lm, spec.adapter_dir, trainable=(mode == "continue"))
    if on_uploaded is not None:
        on_uploaded(lm)
    if spec.adapter_dir is not None and mode == "merge_fresh":
        merge_adapter(lm, cfg.adapter_scale)
    if spec.adapter_dir is None or mode == "merge_fresh":
        r = cfg.lora_r or default_rank(lm.hidden_size)
        add_lora(
            lm, r=r, alpha=cfg.lora_alpha or r, dropout=cfg.lora_dropout, target=cfg.target_modules
        )
    check_checkpointing(lm, cfg)  # refused now, not after a W2SDefense teacher is trained
    return lm, (mode if spec.adapter_dir is not None else "fresh")


def attack_label(attack: AttackSpec) -> str:
    trigger = attack.trigger if attack.trigger is not None else "default trigger"
    return f"{attack.name} '{trigger}'"


def measure(
    lm: Any,
    rows: list[Any],
    spec: JobSpec,
    eval_kw: dict[str, Any],
    progress: Callable[[Any], None] | None = None,
    phase: str = "evaluate",
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Metrics on the job's attack, and ASR (etc.) on every extra attack, keyed by label; the
    job's own evaluation reports its rows to ``progress`` as ``phase``."""
    from sanitizer.evaluate import evaluate

    main = evaluate(lm, rows, spec.attack, progress=progress, phase=phase, **eval_kw)
    per_attack = {attack_label(spec.attack): main} if spec.attack else {}
    for extra in spec.extra_attacks:
        per_attack[attack_label(extra)] = evaluate(lm, rows, extra, **eval_kw)
    return main, per_attack


def _run_baseline(
    spec: JobSpec,
    cfg: Any,
    num_labels: int | None,
    train_rows: list[Any],
    dev_rows: list[Any],
    test_rows: list[Any],
    eval_kw: dict[str, Any],
    emit: Callable[[Any], None],
    should_cancel: Callable[[], bool] | None,
) -> dict[str, Any]:
    """Plain fine-tuning from the same starting point (base + uploaded adapter, same adapter
    mode, the shared training fields of the job's config): the honest control."""
    from dataclasses import replace

    from sanitizer.defenses import METHODS
    from sanitizer.defenses.common import set_seed, validate_config
    from sanitizer.defenses.configs import TrainConfig

    ft_cls, finetune = METHODS["finetune"]
    shared = {k: v for k, v in cfg.model_dump().items() if k in TrainConfig.model_fields}
    ft_cfg = validate_config(ft_cls, shared)
    set_seed(spec.seed)
    t = time.monotonic()
    lm, mode = prepare_model(spec, ft_cfg, num_labels)  # adapter_mode is among the shared fields

    def relabel(event: Any) -> None:
        emit(replace(event, phase=f"baseline_{event.phase}"))

    finetune(lm, train_rows, dev_rows, ft_cfg, progress=relabel, should_cancel=should_cancel)
    train_s = time.monotonic() - t
    after, per_attack = measure(lm, test_rows, spec, eval_kw)
    return {
        "method": "finetune",
        "adapter_mode": mode,
        "config": ft_cfg.model_dump(),
        "metrics": {"after": after, "per_attack": per_attack},
        "timings": {"defense_s": train_s},
    }


@dataclass
class JobData:
    """A job's datasets: the clean set split into train/dev, and the rows ASR/CA are measured on."""

    clean: Any
    train: Any
    dev: Any
    label_names: list[str] | None
    test_rows: list[Any]
    test_info: dict[str, Any]
    unlabeled: list[str] = field(default_factory=list)
    unlabeled_info: dict[str, Any] | None = None

    @property
    def num_labels(self) -> int | None:
        return len(self.label_names) if self.label_names else None


def load_job_data(spec: JobSpec) -> JobData:
    clean = _load_data(spec.clean_data, spec, spec.task, spec.label_names)
    label_names = clean.label_names if spec.task == "classification" else None
    train_ds, dev_ds, _ = split_dataset(
        clean, dev_fraction=spec.dev_fraction, test_fraction=0.0, seed=spec.seed
    )
    if spec.test_data is not None:
        test_ds = _load_data(spec.test_data, spec, spec.task, label_names)
        test_rows = cap_rows(test_ds.rows, spec.max_test_rows, spec.seed)
        test_info = {"sha256": test_ds.sha256, "rows": len(test_ds), "source": "test_data"}
    else:
        test_rows = list(dev_ds.rows)
        test_info = {
            "sha256": clean.sha256,
            "rows": len(test_rows),
            "source": "clean dev split (no test data given)",
        }
    test_info["evaluated_rows"] = len(test_rows)
    data = JobData(clean, train_ds, dev_ds, label_names, test_rows, test_info)
    if spec.unlabeled_data is not None:
        from sanitizer.data import load_texts

        data.unlabeled, digest = load_texts(spec.unlabeled_data, spec.text_column)
        data.unlabeled_info = {"sha256": digest, "rows": len(data.unlabeled)}
    return data


def eval_kwargs(spec: JobSpec, cfg: Any) -> dict[str, Any]:
    return {"max_length": cfg.max_length} if spec.task == "classification" else {}


def _unlearn_first(
    lm: Any,
    train_rows: Any,
    dev_rows: Any,
    cfg: Any,
    emit: Callable[[Any], None],
    should_cancel: Callable[[], bool] | None,
) -> dict[str, Any]:
    """The ``unlearn_first`` stage: the unlearn method's scan-and-overwrite rounds (its own
    defaults; the job's seed, batch size, max length and device) on the model the method then
    starts from. Its phases are reported as ``unlearn_first_<phase>``. Returns what it found."""
    from dataclasses import replace

    from sanitizer.defenses import unlearn
    from sanitizer.defenses.configs import UnlearnConfig

    stage = UnlearnConfig(seed=cfg.seed, batch_size=cfg.batch_size, max_length=cfg.max_length)
    stats = unlearn.run(
        lm,
        list(train_rows),
        list(dev_rows),
        stage,
        progress=lambda e: emit(replace(e, phase=f"unlearn_first_{e.phase}")),
        should_cancel=should_cancel,
    )
    return {**stats["unlearn"], "steps": stats.get("steps")}


def identify_trusted_base(spec: JobSpec) -> tuple[JobSpec, dict[str, Any] | None]:
    """For an ``auto`` job on full weights with no base named: which model of this service's
    store the weights were fine-tuned from (sanitizer/base_match.py). When one is found and the
    job's settings suit rebuild, the spec comes back with ``trusted_base`` set to it; the block
    says what was compared and what was decided (None when the job is not such a job)."""
    from sanitizer.base_match import identify_base
    from sanitizer.hub import list_models, resolve_model

    hp = spec.hyperparameters
    if spec.method != registry.AUTO or spec.adapter_dir is not None or hp.get("trusted_base"):
        return spec, None
    t = time.monotonic()
    upload = resolve_model(spec.base_model, spec.base_revision)

    def candidates() -> Iterator[tuple[str, Path]]:
        for m in list_models():
            try:
                yield m, resolve_model(m)
            except SanitizerError:  # listed but not loadable: not a candidate
                continue

    found, checked = identify_base(upload, candidates())
    block: dict[str, Any] = {
        "identified": found,
        "candidates": [c.to_dict() for c in checked],
    }
    if found:
        values = {"seed": spec.seed, **hp, "trusted_base": found}
        try:
            registry.config_for("rebuild", values).check_task(spec.task)
        except ConfigError as exc:
            block["identified"] = None
            block["not_used"] = f"the job's settings do not suit rebuild: {exc.message}"
        else:
            spec = spec.model_copy(update={"hyperparameters": {**hp, "trusted_base": found}})
    block["seconds"] = round(time.monotonic() - t, 3)
    return spec, block


def run_sanitize(
    spec: JobSpec,
    out_dir: Path,
    progress: Callable[[Any], None] | None = None,
    should_cancel: Callable[[], bool] | None = None,
    known_before: tuple[dict[str, Any], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Measure, defend, measure; write ``out_dir/adapter/`` and ``out_dir/report.json``.

    ``known_before``: the uploaded model's metrics (main, per attack) from an earlier job on the
    same model, test rows, attacks and seed (a benchmark's other methods); they are reported as
    they were and not measured again (``timings.evaluate_before_s`` is then 0 and
    ``metrics.before_reused`` is true)."""
    import torch

    from sanitizer.adapter_files import combine_lora_into_one
    from sanitizer.defenses.common import ProgressEvent, set_seed, validate_config
    from sanitizer.models import save_adapter

    t0 = time.monotonic()
    reset_peak_memory()
    timings: dict[str, float] = {}
    emit = progress or (lambda e: None)
    spec, base_identification = identify_trusted_base(spec)
    if base_identification is not None:
        timings["identify_base_s"] = base_identification.pop("seconds")
    identified = (base_identification or {}).get("identified")
    method, method_reason = registry.resolve(
        spec.method,
        task=spec.task,
        has_adapter=spec.adapter_dir is not None,
        trusted_base=bool(spec.hyperparameters.get("trusted_base")),
        identified_base=identified,
    )
    method_spec = registry.get(method)
    defend = method_spec.runner()
    cfg = validate_config(method_spec.config, {"seed": spec.seed, **spec.hyperparameters})
    if (
        spec.task == "classification"
        and spec.attack is not None
        and spec.attack.name not in {"badnet", "insertsent", "syntactic"}
    ):
        raise ConfigError(
            f"attack '{spec.attack.name}' is a generation attack",
            hint="use badnet, insertsent or syntactic",
        )
    if spec.unlabeled_data is not None and (method != "rebuild" or spec.task != "classification"):
        chose = " (auto's choice: the job has no trusted base)" if spec.method == "auto" else ""
        raise ConfigError(
            f"unlabeled_data is used by rebuild on classification only (this job: {method}"
            f"{chose} on {spec.task})",
            hint="leave unlabeled_data out, or run method rebuild on a classification task "
            "(with a base + adapter, or hyperparameter trusted_base=<the model it was "
            "fine-tuned from>)",
        )
    set_seed(spec.seed)
    torch.set_grad_enabled(True)

    emit(ProgressEvent("load", message="loading data and model"))
    data = load_job_data(spec)
    train_ds, dev_ds = data.train, data.dev
    label_names, num_labels, test_rows = data.label_names, data.num_labels, data.test_rows
    eval_kw = eval_kwargs(spec, cfg)
    measured: dict[str, Any] = {}

    def measure_before(uploaded: Any) -> None:
        # the model as uploaded, not the (possibly shrunk) start of the defense
        t = time.monotonic()
        if known_before is not None:
            measured["before"] = known_before
        else:
            emit(ProgressEvent("evaluate_before", message=f"evaluating on {len(test_rows)} rows"))
            measured["before"] = measure(
                uploaded, test_rows, spec, eval_kw, emit, "evaluate_before"
            )
        timings["evaluate_before_s"] = time.monotonic() - t

    lm, adapter_mode = prepare_model(
        spec, cfg, num_labels, on_uploaded=measure_before, start=method_spec.start
    )
    before, per_attack_before = measured["before"]
    timings["load_s"] = (
        time.monotonic() - t0 - timings["evaluate_before_s"] - timings.get("identify_base_s", 0.0)
    )

    t = time.monotonic()
    first = None
    if getattr(cfg, "unlearn_first", False) and method != "unlearn":
        first = _unlearn_first(lm, train_ds.rows, dev_ds.rows, cfg, emit, should_cancel)
        timings["unlearn_first_s"] = time.monotonic() - t
    stats = defend(
        lm,
        list(train_ds.rows),
        list(dev_ds.rows),
        cfg,
        progress=emit,
        should_cancel=should_cancel,
        **({"unlabeled": data.unlabeled} if data.unlabeled else {}),
    )
    if first is not None:
        stats["unlearn_first"] = first
    timings["defense_s"] = time.monotonic() - t

    t = time.monotonic()
    emit(ProgressEvent("evaluate_after", message=f"evaluating on {len(test_rows)} rows"))
    after, per_attack_after = measure(lm, test_rows, spec, eval_kw, emit, "evaluate_after")
    timings["evaluate_after_s"] = time.monotonic() - t
    scan_block = None
    if spec.scan_after:
        from sanitizer.scan import ScanConfig, scan_model

        emit(ProgressEvent("scan", message="scanning the sanitized model for a backdoor"))
        t = time.monotonic()
        scan_block = scan_model(
            lm, list(train_ds.rows) + list(dev_ds.rows), label_names, ScanConfig(seed=spec.seed)
        ).to_dict()
        scan_block["of"] = "the sanitized model"
        timings["scan_s"] = time.monotonic() - t

    emit(ProgressEvent("save", message="writing the sanitized adapter"))
    out_dir = Path(out_dir)
    adapter_out = out_dir / "adapter"
    if adapter_out.exists():  # a re-run of the same job starts from a clean state
        shutil.rmtree(adapter_out)
    if adapter_mode == "merge_fresh":
        with tempfile.TemporaryDirectory(dir=out_dir if out_dir.exists() else None) as tmp:
            save_adapter(lm, Path(tmp), label_names)
            assert spec.adapter_dir is not None  # merge_fresh starts from an uploaded adapter
            combine_lora_into_one(
                spec.adapter_dir, Path(tmp), adapter_out, base_scale=cfg.adapter_scale
            )
    else:
        save_adapter(lm, adapter_out, label_names)
    from sanitizer.adapter_files import sha256_of_dir

    model_facts = {
        "base_sha256": sha256_of_dir(lm.model_dir),
        "adapter_in": {"mode": adapter_mode, **lm.adapter_info} if spec.adapter_dir else None,
        "prompt_template": lm.template.to_dict(),
        "device": str(lm.device),
        "peak_memory_mb": round(peak_memory_mb(lm.device), 1),
    }
    if spec.baseline or spec.comparators:
        del lm  # free the defended model before the next one is loaded
    baseline = None
    if spec.baseline:
        emit(ProgressEvent("baseline", message="plain fine-tuning baseline from the same start"))
        t = time.monotonic()
        baseline = _run_baseline(
            spec,
            cfg,
            num_labels,
            list(train_ds.rows),
            list(dev_ds.rows),
            test_rows,
            eval_kw,
            emit,
            should_cancel,
        )
        timings["baseline_s"] = time.monotonic() - t
    comparators = None
    if spec.comparators:
        from sanitizer.measure_jobs import run_comparators  # it builds on this module

        t = time.monotonic()
        comparators = run_comparators(spec, num_labels, test_rows, eval_kw, emit)
        timings["comparators_s"] = time.monotonic() - t
    timings["total_s"] = time.monotonic() - t0

    report = build_report(
        spec,
        (method, method_reason),
        data,
        cfg,
        stats,
        timings,
        model_facts,
        metrics_block(spec, before, after, per_attack_before, per_attack_after),
    )
    from sanitizer import model_card

    # the base the written adapter applies to: rebuild of full weights builds on a named base
    adapter_base = str(spec.hyperparameters.get("trusted_base") or spec.base_model)
    model_card.write(adapter_out, adapter_base, spec.task, label_names, report)
    from sanitizer.adapter_files import file_hashes

    report["adapter_out"] = {"base_model": adapter_base, "files": file_hashes(adapter_out)}
    if scan_block is not None:
        report["scan"] = scan_block
    if base_identification is not None:
        report["base_identification"] = base_identification
    if baseline is not None:
        report["baseline"] = baseline
    if comparators is not None:
        report["comparators"] = comparators
    if known_before is not None:
        report["metrics"]["before_reused"] = True
    write_report(out_dir, report)
    return report


# ---------------------------------------------------------------- attack
