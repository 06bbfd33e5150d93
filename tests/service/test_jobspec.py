"""Issue 20 item 2: one path from the API's job request to the library's JobSpec. Every field
of the request either reaches the spec through ``JobSpec.from_request`` or is named here as the
service's own; a field added to the API and forgotten by the worker fails this test."""

from __future__ import annotations

from pathlib import Path

from app.schemas import Evaluation, JobCreate
from sanitizer.jobspec import JobSpec

SERVICE_ONLY = {
    "type", "adapter_file", "clean_dataset_file", "unlabeled_dataset_file",  # file ids
    "metadata", "webhook_url", "policy",
}  # fmt: skip
EVALUATION_SERVICE_ONLY = {"test_dataset_file", "target_label_names"}  # a file id; resolved names


def test_every_request_field_reaches_the_spec_or_is_the_services(tmp_path: Path) -> None:
    assert set(JobCreate.model_fields) - SERVICE_ONLY == {
        "method", "task", "base_model", "base_revision", "text_column", "label_column",
        "evaluation", "hyperparameters", "seed",
    }  # fmt: skip
    assert set(Evaluation.model_fields) - EVALUATION_SERVICE_ONLY == {
        "attack", "extra_attacks", "max_test_rows", "baseline", "comparators", "scan",
    }  # fmt: skip
    body = JobCreate(
        method="crow",
        base_model="org/model",
        base_revision="abc",
        task="classification",
        clean_dataset_file="file_x",
        text_column="review",
        label_column="sentiment",
        evaluation=Evaluation(
            attack={"name": "badnet", "trigger": "cf", "target_label": 1},
            extra_attacks=[{"name": "insertsent", "target_label": 1}],
            max_test_rows=77,
            baseline=True,
            comparators=["int8"],
            scan=True,
        ),
        hyperparameters={"epochs": 2, "alpha": 3.0},
        seed=9,
    )
    stored = body.model_dump(mode="json")  # what the API writes to the job row
    spec = JobSpec.from_request(stored, clean_data=tmp_path / "c.csv", device="cpu")
    assert (spec.method, spec.base_model, spec.base_revision, spec.task) == (
        "crow", "org/model", "abc", "classification",
    )  # fmt: skip
    assert (spec.text_column, spec.label_column, spec.seed) == ("review", "sentiment", 9)
    assert spec.attack is not None and (spec.attack.trigger, spec.attack.target_label) == ("cf", 1)
    assert [a.name for a in spec.extra_attacks] == ["insertsent"]
    assert (spec.max_test_rows, spec.baseline, spec.comparators, spec.scan_after) == (
        77, True, ["int8"], True,
    )  # fmt: skip
    assert spec.hyperparameters == {"epochs": 2, "alpha": 3.0} and spec.device == "cpu"
