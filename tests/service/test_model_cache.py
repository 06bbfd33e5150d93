"""Issue 25 item 2: base models published to the artifact store are cached per host, keyed
by (id, revision), reused across jobs, refreshed when the published copy changes, and
bounded in size (least recently used evicted). A local store here; the S3 path runs end to
end in test_s3store.py (a worker host with no models of its own)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from jobstore.artifacts import LocalArtifactStore
from jobstore.model_cache import ensure_model, push_model, resolve
from sanitizer.errors import UnknownModelError


class Counting(LocalArtifactStore):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.fetched: list[str] = []

    def fetch(self, key: str, dest: Path) -> Path:
        self.fetched.append(key)
        return super().fetch(key, dest)


def test_published_models_are_cached_reused_refreshed_and_bounded(assets, tmp_path):
    store = Counting(tmp_path / "store")
    src = assets["store"] / "tiny--bert"
    n = push_model(store, src, "tiny/bert", None)
    assert n == len([p for p in src.rglob("*") if p.is_file()])
    assert len(store.list_prefix("models/tiny--bert@main")) == n + 1  # + the manifest
    cache = tmp_path / "cache"

    first = ensure_model(store, "tiny/bert", None, cache, 10**9)
    assert first == cache / "tiny--bert@main" and (first / "config.json").is_file()
    assert len(store.fetched) == n
    assert ensure_model(store, "tiny/bert", None, cache, 10**9) == first
    assert len(store.fetched) == n  # the second job reuses the copy

    (tmp_path / "changed").mkdir()
    shutil.copytree(src, tmp_path / "changed" / "m")
    cfg = tmp_path / "changed" / "m" / "config.json"
    cfg.write_text(cfg.read_text().replace('"', "'", 0) + " ")  # same name, new bytes
    push_model(store, tmp_path / "changed" / "m", "tiny/bert", None)
    again = ensure_model(store, "tiny/bert", None, cache, 10**9)
    assert (again / "config.json").read_text() == cfg.read_text()  # refetched
    assert ensure_model(store, "tiny/nope", None, cache, 10**9) is None

    # (id, revision) are separate entries; beyond the bound the least recently used goes
    push_model(store, src, "tiny/bert", "v2")
    push_model(store, assets["store"] / "tiny--other", "tiny/other", None)
    one = sum(p.stat().st_size for p in first.rglob("*") if p.is_file())
    v2 = ensure_model(store, "tiny/bert", "v2", cache, 10 * one)
    old = time.time() - 100
    os.utime(first / ".sanitizer-model.json", (old, old))  # main: least recently used
    other = ensure_model(store, "tiny/other", None, cache, int(1.9 * one))
    assert other is not None and other.exists() and v2 is not None
    assert not first.exists() and v2.exists()  # main evicted; v2 (newer) kept


def test_the_service_resolves_a_published_model_it_has_not_installed(
    service_env, assets, tmp_path, monkeypatch
):
    from jobstore.artifacts import get_store
    from tests.service.conftest import reset_caches

    monkeypatch.setenv("SANITIZER_MODEL_STORE", str(tmp_path / "empty"))
    reset_caches()
    with pytest.raises(UnknownModelError) as err:
        resolve("tiny/bert")
    assert str(tmp_path) not in err.value.hint  # a remote client never sees server paths
    push_model(get_store(), assets["store"] / "tiny--bert", "tiny/bert", None)
    folder = resolve("tiny/bert")
    assert folder.name == "tiny--bert@main" and (folder / "config.json").is_file()
    assert str(folder).startswith(service_env["SANITIZER_DATA_DIR"])  # <data_dir>/model-cache
