"""Request and response bodies. Families: ``XCreate`` (in), ``XPublic`` (out), ``XsPublic`` (a page)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, StringConstraints, model_validator
from pydantic.json_schema import SkipJsonSchema

from sanitizer.attacks import AttackSpec
from sanitizer.defenses.configs import Comparator
from sanitizer.defenses.registry import method_names

METHODS = method_names(include_auto=True)
# the OpenAI API's metadata bounds: 16 pairs, keys <= 64 characters, values <= 512
MetaKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetaValue = Annotated[
    str, StringConstraints(max_length=512)
]  # the library's torch-free registry, and 'auto'


class FilePublic(BaseModel):
    id: str
    object: Literal["file"] = "file"
    purpose: Literal["adapter", "dataset", "unlabeled"]
    filename: str
    bytes: int
    sha256: str
    created_at: datetime
    details: dict[str, Any] = Field(
        default_factory=dict, description="what validation found (rows, labels, base model ...)"
    )


class FilesPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[FilePublic]
    has_more: bool
    last_id: str | None


class Evaluation(BaseModel):
    """How ASR/CA are measured before and after the defense."""

    model_config = ConfigDict(extra="forbid")

    # attack.target_label may be a label *name* ("negative"): it is kept here, keyed by the
    # attack's field path, and resolved against the clean dataset's labels at submission
    target_label_names: SkipJsonSchema[dict[str, str]] = Field(default_factory=dict, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _label_names(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        data.pop("target_label_names", None)  # never from the request
        names: dict[str, str] = {}

        def take(where: str, attack: object) -> object:
            if not isinstance(attack, dict):
                return attack
            t = attack.get("target_label")
            if isinstance(t, str) and not t.strip().isdigit():
                names[where] = t
                return {**attack, "target_label": 0}  # placeholder until resolved
            return attack

        data["attack"] = take("evaluation.attack", data.get("attack"))
        extra = data.get("extra_attacks")
        if isinstance(extra, list):
            data["extra_attacks"] = [
                take(f"evaluation.extra_attacks.{i}", a) for i, a in enumerate(extra)
            ]
        data["target_label_names"] = names
        return data

    test_dataset_file: str | None = Field(
        None, description="dataset file id; default: the clean set's held-out dev split"
    )
    attack: AttackSpec | None = Field(
        None, description="trigger/target of the suspected backdoor, used to compute ASR"
    )
    max_test_rows: int | None = Field(None, ge=1, description="evaluate on at most this many rows")
    extra_attacks: list[AttackSpec] = Field(
        default_factory=list,
        max_length=8,
        description="more triggers/attacks to measure ASR on before and after "
        "(the report's per-attack breakdown)",
    )
    baseline: bool = Field(
        False,
        description="also run plain fine-tuning from the same start and report it beside the "
        "defense (the honest control); roughly doubles the job's time",
    )
    scan: bool = Field(
        False,
        description="scan the sanitized model for a remaining backdoor with no "
        "trigger knowledge; the report's `scan` holds the verdict, the candidates, the target",
    )
    comparators: list[Comparator] = Field(
        default_factory=list,
        max_length=3,
        description="zero-training comparators to measure on the uploaded model beside the "
        "defense: prune (magnitude pruning, 35%), int8, int4 (weight-only rounding); one "
        "test-set evaluation each, reported under `comparators`",
    )


class ReleasePolicy(BaseModel):
    """A release gate the job's report is checked against (the CLI's --max-asr/--max-ca-drop)."""

    model_config = ConfigDict(extra="forbid")

    max_asr: float | None = Field(
        None, ge=0, le=1, description="ASR after sanitization at most this (0.05 = 5%)"
    )
    max_ca_drop: float | None = Field(
        None,
        ge=-1,
        le=1,
        description="clean accuracy / utility may drop at most this (0.01); negative: it must "
        "rise by at least that much",
    )


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["sanitize", "scan"] = Field(
        "sanitize",
        description="sanitize: remove a backdoor and return a sanitized adapter (default); "
        "scan: look for a backdoor with no trigger knowledge and report a verdict, trigger "
        "candidates and the target (classification; no adapter is written)",
    )
    method: str = Field(
        "auto",
        description=f"{' | '.join(METHODS)}; auto (default) chooses per input kind and the "
        "report says what it chose and why: rebuild for a base + adapter; for full weights, "
        "rebuild on the model of this service's store they were fine-tuned from when the "
        "weights show one (report.base_identification), else crow",
    )
    base_model: str = Field(min_length=1, max_length=300, description="Hugging Face model id")
    base_revision: str | None = Field(None, max_length=200)
    task: Literal["classification", "generation"] = "classification"
    adapter_file: str | None = Field(None, description="file id (purpose=adapter)")
    clean_dataset_file: str = Field(description="file id (purpose=dataset)")
    unlabeled_dataset_file: str | None = Field(
        None,
        description="file id (purpose=unlabeled): in-domain texts without labels; classification "
        "rebuild also distils the uploaded model's answers on them (method rebuild, or auto, "
        "which rebuilds when it has a trusted base)",
    )
    text_column: str = "text"
    label_column: str = "label"
    evaluation: Evaluation | None = None
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict,
        description="overrides of the method's config (epochs, max_steps, learning_rate, "
        "batch_size, lora_r, ...); defaults are the method's published recipe",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="random seed (0 .. 2^32-1)")
    metadata: dict[MetaKey, MetaValue] = Field(
        default_factory=dict,
        description="your labels: at most 16 keys of up to 64 characters, values of up to 512; "
        "filter with metadata[k]=v",
    )
    webhook_url: AnyHttpUrl | None = Field(
        None, description="POSTed job.succeeded|failed|cancelled, Standard Webhooks signed"
    )
    policy: ReleasePolicy | None = Field(
        None,
        description="release policy: the report (JSON `verdict`, and the HTML page's banner) "
        "says passed or failed against it",
    )


class Progress(BaseModel):
    phase: str | None = None
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    eta_seconds: float | None = None
    losses: dict[str, float] = Field(default_factory=dict)
    message: str | None = None
    overall: float | None = Field(
        None, description="share of the whole job done (0..1), across phases; null until the "
        "training phase has a step rate to estimate from",
    )  # fmt: skip
    overall_eta_seconds: float | None = Field(
        None, description="seconds until the whole job ends (estimated; null: not yet known)"
    )


class JobError(BaseModel):
    code: str
    message: str


class AdapterArtifact(BaseModel):
    url: str
    sha256: str


class JobPublic(BaseModel):
    id: str
    object: Literal["job"] = "job"
    type: Literal["sanitize", "scan"] = "sanitize"
    status: Literal[
        "validating", "queued", "running", "succeeded", "failed", "cancelling", "cancelled"
    ]
    method: str
    task: str
    base_model: str
    base_revision: str | None
    adapter_file: str | None
    clean_dataset_file: str
    unlabeled_dataset_file: str | None = None
    evaluation: dict[str, Any] | None
    hyperparameters: dict[str, Any]
    seed: int
    metadata: dict[str, str]
    webhook_url: str | None
    policy: dict[str, Any] | None = None
    progress: Progress | None
    error: JobError | None
    attempt: int
    created_at: datetime
    queued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    artifacts: dict[str, AdapterArtifact] | None = None
    report_url: str | None = None


class JobsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobPublic]
    has_more: bool
    last_id: str | None


class EventPublic(BaseModel):
    id: str
    created_at: datetime
    level: str
    message: str
    phase: str | None
    metrics: dict[str, Any]


class EventsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[EventPublic]
    has_more: bool
    last_id: str | None


class ProjectPublic(BaseModel):
    id: str
    name: str
    webhook_secret: str = Field(description="verifies the webhook-signature header")


class ModelPublic(BaseModel):
    id: str = Field(description="the id a job names as base_model (or a teacher_model)")
    object: Literal["model"] = "model"
    revision: str | None = Field(None, description="published revision (None: installed)")
    source: Literal["installed", "published"] = Field(
        description="installed on the API host, or published to the artifact store "
        "(`sanitizer models push`) and copied to a worker host when a job names it"
    )


class ModelsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelPublic]


class MethodPublic(BaseModel):
    id: str
    object: Literal["method"] = "method"
    summary: str
    needs_trusted_base: bool = Field(
        description="needs a base model id plus an adapter (it rebuilds on the base)"
    )
    hyperparameters: dict[str, Any] = Field(description="JSON schema of its hyperparameters")


class MethodsPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[MethodPublic]
