"""Checks of a job request before it is accepted: files, labels, method, model, attack,
hyperparameters and webhook target, all without torch (a bad job fails now with a 4xx)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.problems import ApiError, from_library
from app.schemas import (
    Evaluation,
    JobCreate,
)
from jobstore.artifacts import ArtifactStore
from jobstore.models import File, Project
from jobstore.settings import Settings
from jobstore.webhook_targets import WebhookTargetError, check_url
from sanitizer.attacks import CLASSIFICATION_ATTACKS, GENERATION_ATTACKS, AttackSpec
from sanitizer.defenses import registry
from sanitizer.defenses.configs import ScanConfig, validate_config
from sanitizer.defenses.registry import config_for
from sanitizer.errors import ConfigError, SanitizerError

MAX_METADATA_KEYS = 16

TASK_ATTACKS = {"classification": CLASSIFICATION_ATTACKS, "generation": GENERATION_ATTACKS}


def owned_file(s: Session, project: Project, file_id: str, purpose: str, field: str) -> File:
    f = s.get(File, file_id)
    if f is None or f.project_id != project.id:
        raise ApiError(
            404,
            "file_not_found",
            f"{field} '{file_id}' is not a file of this project",
            hint="upload it with POST /v1/files and use the returned id",
            field=field,
        )
    if f.purpose != purpose:
        raise ApiError(
            422,
            "wrong_file_purpose",
            f"{field} '{file_id}' was uploaded with purpose '{f.purpose}', not '{purpose}'",
            hint=f"upload the file again with purpose={purpose}",
            field=field,
        )
    return f


def _resolve_label_names(
    body: JobCreate, ev: Evaluation, names: list[str] | None
) -> tuple[JobCreate, list[tuple[str, AttackSpec]]]:
    """``body`` with every target label given by name replaced by its id in the clean
    dataset's labels, and the (field, attack) pairs of the result."""
    resolved: dict[str, int] = {}
    for where, name in ev.target_label_names.items():
        if not names or name not in names:
            known = ", ".join(f"{i}={n}" for i, n in enumerate((names or [])[:50]))
            raise ApiError(
                422,
                "invalid_attack",
                f"{where}.target_label '{name}' is not a label of the clean dataset"
                + (f" (its labels: {known})" if known else " (it has no label names)"),
                hint="give one of the dataset's label names or its id",
                field=f"{where}.target_label",
            )
        resolved[where] = names.index(name)

    def fix(where: str, a: AttackSpec) -> AttackSpec:
        return a.model_copy(update={"target_label": resolved[where]}) if where in resolved else a

    new_ev = ev.model_copy(
        update={
            "attack": fix("evaluation.attack", ev.attack) if ev.attack else None,
            "extra_attacks": [
                fix(f"evaluation.extra_attacks.{i}", a) for i, a in enumerate(ev.extra_attacks)
            ],
            "target_label_names": {},
        }
    )
    new_body = body.model_copy(update={"evaluation": new_ev})
    attacks = [("evaluation.attack", new_ev.attack)] if new_ev.attack else []
    attacks += [(f"evaluation.extra_attacks.{i}", a) for i, a in enumerate(new_ev.extra_attacks)]
    return new_body, attacks


def check_inputs(
    body: JobCreate, s: Session, project: Project, settings: Settings, store: ArtifactStore
) -> JobCreate:
    """Everything that can be checked without torch, so bad jobs fail now with a 4xx.
    Returns the body as it is stored: target labels given by name resolved to ids."""
    from app.uploads import validate_dataset, validate_texts
    from jobstore.model_cache import resolve
    from sanitizer.archives import extract_archive
    from sanitizer.safety import check_adapter_dir, check_adapter_fits

    methods = registry.method_names(include_auto=True)  # read per request: the registry
    if body.type == "scan":
        _check_scan(body)
    elif body.method not in methods:
        raise ApiError(
            422,
            "unknown_method",
            f"unknown method '{body.method}'",
            hint=f"use one of: {', '.join(methods)}",
            errors=[{"loc": ["body", "method"], "message": f"one of {', '.join(methods)}"}],
        )
    if len(body.metadata) > MAX_METADATA_KEYS:
        raise ApiError(
            422,
            "invalid_metadata",
            f"metadata has {len(body.metadata)} keys; at most {MAX_METADATA_KEYS} are allowed",
            errors=[{"loc": ["body", "metadata"], "message": f"at most {MAX_METADATA_KEYS} keys"}],
            hint="keep the keys you filter on; put the rest in one JSON-encoded value",
        )
    config = _check_config(body)
    if body.unlabeled_dataset_file:
        _check_unlabeled_use(body)
    if body.webhook_url is not None:
        try:
            check_url(str(body.webhook_url), settings.webhook_allow)
        except WebhookTargetError as exc:
            raise ApiError(
                422,
                "invalid_webhook_url",
                str(exc),
                hint="give a public http(s) URL, or ask the operator to allow the host",
                field="webhook_url",
            ) from exc
    try:
        if body.type == "sanitize":
            registry.resolve(
                body.method,
                task=body.task,
                has_adapter=body.adapter_file is not None,
                trusted_base=bool(getattr(config, "trusted_base", None)),
            )
    except ConfigError as exc:
        raise from_library(exc, field="method") from exc
    try:
        model_dir = resolve(body.base_model, body.base_revision)
    except SanitizerError as exc:
        raise from_library(exc, field="base_model") from exc
    for name in ("teacher_model", "trusted_base"):  # other models a method loads by id
        other = getattr(config, name, None)
        if other:
            try:
                resolve(other)
            except SanitizerError as exc:
                raise from_library(exc, field=f"hyperparameters.{name}") from exc
    ev = body.evaluation
    attacks = [("evaluation.attack", ev.attack)] if ev and ev.attack else []
    if ev:
        attacks += [(f"evaluation.extra_attacks.{i}", a) for i, a in enumerate(ev.extra_attacks)]
    for where, attack in attacks:
        if attack.task != body.task:
            raise ApiError(
                422,
                "invalid_attack",
                f"{where}: attack '{attack.name}' is a {attack.task} attack but the job's task "
                f"is {body.task}",
                hint=f"for {body.task} use one of: {', '.join(TASK_ATTACKS[body.task])}",
                field=f"{where}.name",
            )
    datasets = [("clean_dataset_file", body.clean_dataset_file)]
    if body.evaluation and body.evaluation.test_dataset_file:
        datasets.append(("evaluation.test_dataset_file", body.evaluation.test_dataset_file))
    for field, fid in datasets:
        f = owned_file(s, project, fid, "dataset", field)
        info = f.info or {}
        same = (info.get("task"), info.get("text_column"), info.get("label_column")) == (
            body.task,
            body.text_column,
            body.label_column,
        )
        if not same:  # validated at upload for another task/columns: check again for this job
            with store.local_copy(f.storage_key) as local:
                info = validate_dataset(local, body.task, body.text_column, body.label_column)
        names = info.get("label_names")
        if field == "clean_dataset_file" and ev and ev.target_label_names:
            body, attacks = _resolve_label_names(
                body, ev, names if body.task == "classification" else None
            )
        if field == "clean_dataset_file" and body.task == "classification" and names:
            for where, attack in attacks:
                t = attack.target_label
                if t is not None and not 0 <= t < len(names):
                    raise ApiError(
                        422,
                        "invalid_attack",
                        f"{where}.target_label is {t}, but the clean dataset has "
                        f"{len(names)} labels ({', '.join(map(str, names[:20]))}): a target "
                        "that cannot exist would be reported as ASR 0",
                        hint=f"use a label id from 0 to {len(names) - 1}",
                        field=f"{where}.target_label",
                    )
    if body.adapter_file:
        f = owned_file(s, project, body.adapter_file, "adapter", "adapter_file")
        tmp = Path(tempfile.mkdtemp(prefix="check-", dir=_tmp_root(settings)))
        try:
            with store.local_copy(f.storage_key) as local:
                folder = extract_archive(
                    local,
                    tmp,
                    max_bytes=settings.max_extracted_bytes,
                    max_files=settings.max_archive_files,
                )
            adapter = check_adapter_dir(folder, expected_base_model=body.base_model)
            check_adapter_fits(adapter, model_dir)
        except SanitizerError as exc:
            raise from_library(exc, field="adapter_file") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if body.unlabeled_dataset_file:
        field = "unlabeled_dataset_file"
        f = owned_file(s, project, body.unlabeled_dataset_file, "unlabeled", field)
        if (f.info or {}).get("text_column") != body.text_column:  # checked for another column
            with store.local_copy(f.storage_key) as local:
                validate_texts(local, body.text_column, field)
    return body


def _check_unlabeled_use(body: JobCreate) -> None:
    """unlabeled_dataset_file is for a classification job that rebuilds (rebuild, or auto,
    which rebuilds when it has a trusted base)."""
    field = "unlabeled_dataset_file"
    usable = body.type == "sanitize" and body.method in ("rebuild", registry.AUTO)
    if body.task != "classification" or not usable:
        job = "a scan job" if body.type == "scan" else f"method {body.method} on {body.task}"
        raise ApiError(
            422,
            "invalid_unlabeled_data",
            f"{field} is used by rebuild on classification only (this job: {job})",
            hint="leave unlabeled_dataset_file out, or run method rebuild (or auto) on a "
            "classification task",
            field=field,
        )


def _check_scan(body: JobCreate) -> None:
    """A scan job: no method, no evaluation attack (it must not be told the trigger)."""
    if body.method not in ("auto", "scan"):
        raise ApiError(
            422,
            "invalid_method",
            f"a scan job takes no method (got '{body.method}')",
            hint="leave method out for type=scan",
            field="method",
        )
    if body.evaluation is not None and (body.evaluation.attack or body.evaluation.extra_attacks):
        raise ApiError(
            422,
            "invalid_evaluation",
            "a scan job is never told the trigger: evaluation.attack is not allowed",
            hint="leave evaluation out for type=scan; the scan finds triggers on its own",
            field="evaluation.attack",
        )


def _check_config(body: JobCreate) -> Any:
    """The method's validated config, exactly as the worker will build it (torch-free)."""
    try:
        if body.type == "scan":
            return validate_config(ScanConfig, {"seed": body.seed, **body.hyperparameters})
        values = {"seed": body.seed, **body.hyperparameters}
        has_adapter = body.adapter_file is not None
        cfg = config_for(body.method, values, has_adapter=has_adapter)
        cfg.check_task(body.task)
        if body.method == registry.AUTO:  # what auto will run must take the settings too
            chosen, _ = registry.resolve(
                body.method,
                task=body.task,
                has_adapter=has_adapter,
                trusted_base=bool(getattr(cfg, "trusted_base", None)),
            )
            config_for(chosen, values).check_task(body.task)
        return cfg
    except ConfigError as exc:
        cause = exc.__cause__
        errors = (
            [
                {
                    "loc": ["body", "hyperparameters", *e["loc"]],
                    "message": e["msg"],
                    "type": e["type"],
                }
                for e in cause.errors()
            ]
            if isinstance(cause, ValidationError)
            else None
        )
        raise ApiError(
            422, exc.code, exc.message, hint=exc.hint, errors=errors, field="hyperparameters"
        ) from exc


def _tmp_root(settings: Settings) -> Path:
    p = settings.data_dir / "tmp"
    p.mkdir(parents=True, exist_ok=True)
    return p
