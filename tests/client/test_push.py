"""Issue 26 item 9: `sanitizer push` publishes a sanitized adapter with its model card through
huggingface_hub, against a local stand-in of the Hub (tests/client/hub_standin.py)."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import serve_in_thread
from safetensors.numpy import save_file
from typer.testing import CliRunner

from sanitizer import model_card
from sanitizer_cli.main import app
from tests.client.hub_standin import HubState, create_hub


def adapter_folder(root: Path) -> Path:
    folder = root / "sanitized"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "base_model_name_or_path": "tiny/bert", "r": 4})
    )
    save_file({"w": np.ones((2, 2), dtype=np.float32)}, str(folder / "adapter_model.safetensors"))
    model_card.write(folder, "tiny/bert", "classification", ["negative", "positive"])
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    (folder / "manifest.json").write_text(json.dumps({"files": files}))
    return folder


@pytest.fixture
def hub():
    state = HubState()
    with serve_in_thread(create_hub(state)) as url:
        yield state, url


def run(*args: str, token: str = "hf_test_token"):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, list(args), env={"HF_TOKEN": token, "HF_HUB_DISABLE_XET": "1"})


def test_push_publishes_the_folder_with_its_model_card(hub, tmp_path: Path) -> None:
    state, url = hub
    folder = adapter_folder(tmp_path)
    r = run("push", str(folder), "--repo", "acme/clean-model", "--endpoint", url, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["repo_url"].endswith("acme/clean-model") and "/commit/" in out["commit_url"]
    repo = state.repos["acme/clean-model"]
    assert repo["private"] is True  # private unless --public
    assert set(repo["files"]) == {p.name for p in folder.iterdir()}
    for name, data in repo["files"].items():
        assert data == (folder / name).read_bytes(), name
    card = repo["files"]["README.md"].decode()
    assert (
        card.startswith("---")
        and 'base_model: "tiny/bert"' in card
        and "library_name: peft" in card
    )
    assert all(a == "Bearer hf_test_token" for a in state.auth)  # the token, from HF_TOKEN only
    assert "hf_test_token" not in r.output

    # a re-push (the repo exists) commits again instead of failing
    again = run("push", str(folder), "--repo", "acme/clean-model", "--endpoint", url)
    assert again.exit_code == 0, again.output


def test_push_takes_the_downloaded_archive(hub, tmp_path: Path) -> None:
    state, url = hub
    folder = adapter_folder(tmp_path)
    archive = tmp_path / "job-adapter.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for p in folder.iterdir():
            z.write(p, p.name)
    r = run("push", str(archive), "--repo", "acme/from-zip", "--endpoint", url, "--public")
    assert r.exit_code == 0, r.output
    assert state.repos["acme/from-zip"]["private"] is False
    assert "adapter_model.safetensors" in state.repos["acme/from-zip"]["files"]


@pytest.mark.parametrize("defect", ["pickle", "no_card", "tampered"])
def test_push_refuses_a_folder_that_is_not_a_clean_adapter(hub, tmp_path: Path, defect) -> None:
    state, url = hub
    folder = adapter_folder(tmp_path)
    if defect == "pickle":
        (folder / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    elif defect == "no_card":
        (folder / "README.md").unlink()
    else:
        (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 64}')
    r = run("push", str(folder), "--repo", "acme/bad", "--endpoint", url)
    assert r.exit_code == 3, r.output
    assert {"pickle": "pickle", "no_card": "README.md", "tampered": "manifest"}[defect] in r.output
    assert state.calls == []  # nothing reached the Hub


def test_push_reports_a_hub_refusal(hub, tmp_path: Path) -> None:
    _, url = hub
    r = run("push", str(adapter_folder(tmp_path)), "--repo", "noslash", "--endpoint", url)
    assert r.exit_code in (3, 4), r.output
    assert "error" in r.output
