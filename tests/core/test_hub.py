"""sanitizer.hub.resolve_model: the model store, the HF cache fallback, local folders (CLI only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sanitizer.errors import UnknownModelError
from sanitizer.hub import resolve_model


def _model_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SANITIZER_MODEL_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_store_then_hf_cache(env: Path) -> None:
    store = _model_folder(env / "store" / "org--a")
    assert resolve_model("org/a") == store
    snap = _model_folder(env / "hf" / "models--org--b" / "snapshots" / "abc123")
    assert resolve_model("org/b") == snap
    assert resolve_model("org/b", revision="abc123") == snap
    with pytest.raises(UnknownModelError, match="'org/c' is not available.*org/a"):
        resolve_model("org/c")


def test_local_folders_absolute_and_relative(env: Path) -> None:
    folder = _model_folder(env / "work" / "my-model")
    assert resolve_model(str(folder)) == folder
    assert resolve_model("./work/my-model") == folder.resolve()
    assert resolve_model("work/my-model") == folder.resolve()  # id-shaped, not in the store
    with pytest.raises(UnknownModelError, match="not a valid model id") as exc:
        resolve_model("./work/missing")
    assert "folder that holds a config.json" in (exc.value.hint or "")


def test_store_wins_over_a_folder_of_the_same_name(env: Path) -> None:
    store = _model_folder(env / "store" / "org--a")
    _model_folder(env / "org" / "a")  # a stray folder in the working directory
    assert resolve_model("org/a") == store


def test_service_never_takes_a_path(env: Path) -> None:
    folder = _model_folder(env / "work" / "my-model")
    with pytest.raises(UnknownModelError, match="not a valid model id") as exc:
        resolve_model(str(folder), local_paths=False)
    assert "folder" not in (exc.value.hint or "")
    with pytest.raises(UnknownModelError, match="not available"):
        resolve_model("work/my-model", local_paths=False)
