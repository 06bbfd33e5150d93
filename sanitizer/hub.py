"""Resolve model ids to local folders, offline. Torch-free.

A model id ``org/name`` lives in ``<store>/org--name/`` (a plain Hugging Face folder:
config.json, model.safetensors, tokenizer files). The store is ``$SANITIZER_MODEL_STORE``
or ``~/.cache/sanitizer/models``. The Hugging Face hub cache is searched as a fallback.
Nothing is ever downloaded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sanitizer.errors import UnknownModelError

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def cache_dir() -> Path:
    """Root of everything the project caches outside git (models, datasets)."""
    return Path(os.environ.get("SANITIZER_CACHE", Path.home() / ".cache" / "sanitizer"))


def model_store_dir() -> Path:
    return Path(os.environ.get("SANITIZER_MODEL_STORE", cache_dir() / "models"))


def _folder_name(model_id: str) -> str:
    return model_id.replace("/", "--")


MODEL_CACHE_ENV = "SANITIZER_MODEL_CACHE"
CACHE_MARKER = ".sanitizer-model.json"  # written last into a complete cached copy


def cache_folder_name(model_id: str, revision: str | None) -> str:
    """Folder of (id, revision) in a service host's model cache."""
    return f"{_folder_name(model_id)}@{revision or 'main'}"


def _cached(model_id: str, revision: str | None, root: str | Path | None) -> Path | None:
    """A model the service copied from its artifact store (jobstore.model_cache): in
    ``root`` when given, else in ``$SANITIZER_MODEL_CACHE`` (a worker exports it for its job)."""
    root = root or os.environ.get(MODEL_CACHE_ENV)
    if not root:
        return None
    folder = Path(root) / cache_folder_name(model_id, revision)
    return folder if (folder / CACHE_MARKER).is_file() else None


def _hf_cache_candidates(model_id: str, revision: str | None) -> list[Path]:
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", hf_home / "hub"))
    snapshots = hub / f"models--{_folder_name(model_id)}" / "snapshots"
    if not snapshots.is_dir():
        return []
    if revision:
        return [snapshots / revision]
    return sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)


def resolve_model(
    model_id: str,
    revision: str | None = None,
    *,
    local_paths: bool = True,
    cache: str | Path | None = None,
) -> Path:
    """Return the local folder of ``model_id``; raise UnknownModelError if it is not there.

    A folder path (absolute or relative to the working directory) holding a ``config.json`` is
    taken when ``local_paths`` is true; a name that is also a valid id ('org/name') is looked up
    in the model store and the HF cache first, so a stray folder of that name in the working
    directory never shadows an installed model. The service passes false, so a REST client
    names models by id only and never reaches into the server's disk."""
    local = Path(model_id).expanduser()
    is_local = local_paths and (local / "config.json").is_file()
    if not _ID_RE.match(model_id):
        if is_local:
            return local.resolve()
        raise UnknownModelError(
            f"'{model_id}' is not a valid model id",
            hint="use a Hugging Face id like 'org/name' made of letters, digits, '.', '_' and '-'"
            + (" or a folder that holds a config.json" if local_paths else ""),
        )
    folder = model_store_dir() / _folder_name(model_id)
    if (folder / "config.json").is_file():
        return folder
    cached = _cached(model_id, revision, cache)
    if cached is not None:
        return cached
    for cand in _hf_cache_candidates(model_id, revision):
        if (cand / "config.json").is_file():
            return cand
    if is_local:
        return local.resolve()
    available = ", ".join(list_models()) or "none"
    if not local_paths:  # a remote client: name the remedy, not this server's disk
        hint = (
            "use one of the available ids, or ask the operator to install the model "
            "(`sanitizer assets`, or `sanitizer models push` to the service's store)"
        )
    else:
        hint = (
            "run `sanitizer assets` to install the bundled models, or copy a Hugging Face "
            f"folder to {folder}"
        )
    raise UnknownModelError(
        f"base model '{model_id}' is not available on this server (available: {available})",
        hint=hint,
    )


def list_models() -> list[str]:
    """Ids ``resolve_model`` finds: the model store's, and the Hugging Face cache's."""
    found = set()
    store = model_store_dir()
    if store.is_dir():
        found |= {
            p.name.replace("--", "/", 1) for p in store.iterdir() if (p / "config.json").is_file()
        }
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", hf_home / "hub"))
    if hub.is_dir():
        for p in hub.glob("models--*"):
            if any((snap / "config.json").is_file() for snap in (p / "snapshots").glob("*")):
                found.add(p.name.removeprefix("models--").replace("--", "/", 1))
    return sorted(found)
