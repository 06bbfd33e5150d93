"""Base models shared through the artifact store and cached per host (issue 25).

On a pool of GPU hosts the base models need not be installed on every host: an operator
publishes a model folder once (``sanitizer models push org/name``) under
``models/<org--name>@<revision>/`` in the artifact store, and each host that needs it copies
it into its model cache (``SANITIZER_MODEL_CACHE``, default ``<data_dir>/model-cache``),
where the library's ``resolve_model`` finds it. Keyed by (id, revision); a second job on the
host reuses the copy; the cache is bounded (``SANITIZER_MODEL_CACHE_BYTES``) and evicts the
least recently used models. Workers of one host share the cache: a file lock makes one of
them fetch while the others wait, and a copy appears under its final name only when
complete. Torch-free (the API uses it too, to validate a job against the model's config)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from jobstore.artifacts import ArtifactStore
from sanitizer.data import sha256_file as sha_file
from sanitizer.hub import CACHE_MARKER as MARKER
from sanitizer.hub import MODEL_CACHE_ENV, cache_folder_name

PREFIX = "models"
MANIFEST = "sanitizer-manifest.json"  # written last by push: a half-pushed model is unseen


class IntegrityError(RuntimeError):
    """A published model file differs from the manifest pushed with it."""


def store_prefix(model_id: str, revision: str | None) -> str:
    return f"{PREFIX}/{cache_folder_name(model_id, revision)}"


def published_models(store: ArtifactStore) -> list[tuple[str, str]]:
    """(model id, revision) of every model published to ``store``."""
    folders = sorted({key.split("/", 1)[0] for key, _ in store.list_prefix(PREFIX)})
    out = []
    for folder in folders:
        name, _, revision = folder.partition("@")
        out.append((name.replace("--", "/", 1), revision))
    return out


def push_model(store: ArtifactStore, folder: Path, model_id: str, revision: str | None) -> int:
    """Publish a local model folder; return the number of files written."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no config.json: not a model folder")
    prefix = store_prefix(model_id, revision)
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.name != MANIFEST
    )
    manifest = {}
    for p in files:
        rel = p.relative_to(folder).as_posix()
        manifest[rel] = store.put_file(f"{prefix}/{rel}", p)
    store.put_bytes(f"{prefix}/{MANIFEST}", json.dumps({"files": manifest}).encode())
    return len(files)


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _evict(root: Path, max_bytes: int, keep: Path) -> list[str]:
    """Remove least recently used models until the cache fits ``max_bytes`` (never ``keep``)."""
    entries = [p for p in root.iterdir() if p.is_dir() and (p / MARKER).is_file()]
    total = sum(_size(p) for p in entries)
    evicted = []
    for p in sorted(entries, key=lambda e: (e / MARKER).stat().st_mtime):
        if total <= max_bytes:
            break
        if p == keep:
            continue
        total -= _size(p)
        shutil.rmtree(p, ignore_errors=True)
        evicted.append(p.name)
    return evicted


def ensure_model(
    store: ArtifactStore, model_id: str, revision: str | None, root: Path, max_bytes: int
) -> Path | None:
    """The cached folder of a published model, fetched if absent or changed; None when the
    store has no such model (then the host's own model store is the only place to look)."""
    prefix = store_prefix(model_id, revision)
    try:
        with store.open(f"{prefix}/{MANIFEST}") as fh:
            listing: dict[str, str] = json.loads(fh.read())["files"]  # path -> sha256
    except FileNotFoundError:
        return None
    dest = root / cache_folder_name(model_id, revision)
    with _locked(root):
        marker = dest / MARKER
        if marker.is_file() and json.loads(marker.read_text()).get("files") == listing:
            os.utime(marker)  # most recently used
            return dest
        part = root / f".{dest.name}.{uuid.uuid4().hex}.part"
        try:
            for rel, sha in listing.items():
                got = store.fetch(f"{prefix}/{rel}", part / rel)
                if sha_file(got) != sha:
                    raise IntegrityError(f"model file {prefix}/{rel} does not match its sha256")
            (part / MARKER).write_text(
                json.dumps({"model": model_id, "revision": revision, "files": listing,
                            "fetched_at": time.time()})
            )  # fmt: skip
            if dest.exists():
                shutil.rmtree(dest)
            part.rename(dest)
        finally:
            shutil.rmtree(part, ignore_errors=True)
        _evict(root, max_bytes, keep=dest)
    return dest


def use_cache(root: Path) -> None:
    """Point the library's model lookup at this host's cache for a job the worker runs (the
    job's code, and child processes, read it from the environment)."""
    os.environ[MODEL_CACHE_ENV] = str(root)


def resolve(model_id: str, revision: str | None = None) -> Path:
    """``resolve_model`` for the service (ids only): the host's model store first, then the
    artifact store's published models through this host's cache. Raises UnknownModelError."""
    from jobstore.artifacts import get_store
    from jobstore.settings import get_settings
    from sanitizer.errors import UnknownModelError
    from sanitizer.hub import resolve_model

    settings = get_settings()
    root = settings.model_cache_path
    try:
        return resolve_model(model_id, revision, local_paths=False, cache=root)
    except UnknownModelError:
        fetched = ensure_model(get_store(), model_id, revision, root, settings.model_cache_bytes)
        if fetched is None:
            raise
        return resolve_model(model_id, revision, local_paths=False, cache=root)
