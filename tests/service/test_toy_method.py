"""Issue 20: a method added through the registry alone is accepted by the API schema, the CLI
and the pipeline, with no other file touched."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sanitizer.defenses import registry
from sanitizer.defenses.configs import FinetuneConfig
from tests.service.test_api import dataset_id, job_body

RAN: list[dict[str, Any]] = []


class ToyConfig(FinetuneConfig):
    """A method that trains nothing: it records that it ran, with its config."""


def run(lm: Any, train_rows: list[Any], dev_rows: list[Any], cfg: ToyConfig, **_: Any) -> dict:
    RAN.append({"rows": len(train_rows), "seed": cfg.seed})
    return {"steps": 0, "toy": True}


@pytest.fixture
def toy():
    spec = registry.register(
        registry.MethodSpec("toy", ToyConfig, f"{__name__}:run", "does nothing (a test)")
    )
    RAN.clear()
    yield spec
    registry.REGISTRY.pop("toy")


def test_a_registered_method_reaches_the_api_the_cli_and_the_pipeline(toy, api, assets, tmp_path):
    from typer.testing import CliRunner

    from sanitizer_cli.main import app

    # the API: accepted by the schema and the checks, and stored as asked
    ds = dataset_id(api, assets)
    r = api.post("/v1/jobs", json=job_body(ds, method="toy", hyperparameters={"epochs": 1}))
    assert r.status_code == 202, r.text
    assert r.json()["method"] == "toy"
    unknown = api.post("/v1/jobs", json=job_body(ds, method="toy2"))
    assert unknown.status_code == 422 and "toy" in unknown.json()["hint"]

    # the CLI and the pipeline: `defend --method toy` runs the toy's run()
    out = tmp_path / "out"
    res = CliRunner().invoke(
        app,
        [
            "defend",
            "--method",
            "toy",
            "--base-model",
            "tiny/bert",
            "--adapter",
            str(assets["adapter"].with_suffix("")),
            "--clean-data",
            str(assets["clean"]),
            "--test-data",
            str(assets["test"]),
            "--out",
            str(out),
            "--seed",
            "7",
        ],
    )
    assert res.exit_code == 0, res.output
    assert RAN == [{"rows": RAN[0]["rows"], "seed": 7}] and RAN[0]["rows"] > 0
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "toy" and report["training"]["toy"] is True
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
