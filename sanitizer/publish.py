"""Publish a sanitized adapter to the Hugging Face Hub (or any Hub-compatible endpoint) with
``huggingface_hub``. Torch-free.

What is pushed is the folder ``defend`` / a job wrote (adapter_config.json,
adapter_model.safetensors, the model card README.md with the Hub's YAML metadata, manifest.json
and the report), checked first: safetensors weights only, a model card present, every file
matching manifest.json. Nothing is pushed when a check fails."""

from __future__ import annotations

import json
from pathlib import Path

from sanitizer.data import sha256_file
from sanitizer.errors import InputError

REQUIRED = ("adapter_config.json", "README.md")


def check_folder(folder: Path) -> list[str]:
    """The files to push; raises InputError naming what is wrong."""
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder", hint="give the sanitized adapter folder")
    names = sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    missing = [n for n in REQUIRED if n not in names]
    if missing:
        raise InputError(
            f"{folder} has no {' and no '.join(missing)}: not a sanitized adapter folder",
            hint="push the folder `sanitizer defend --out` or `sanitizer jobs download` wrote",
        )
    if not any(n.endswith(".safetensors") for n in names):
        raise InputError(
            f"{folder} has no .safetensors weights", hint="only safetensors are pushed"
        )
    unsafe = [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    if unsafe:
        raise InputError(
            f"{folder} holds pickle-format files {unsafe}; they are never published",
            hint="remove them: the adapter's weights are in adapter_model.safetensors",
        )
    manifest = folder / "manifest.json"
    if manifest.is_file():
        listed = json.loads(manifest.read_text()).get("files", {})
        for name, entry in listed.items():
            want = entry.get("sha256") if isinstance(entry, dict) else entry
            path = folder / name
            if not path.is_file() or sha256_file(path) != want:
                raise InputError(
                    f"{name} does not match manifest.json: the folder changed since it was written",
                    hint="download or write the adapter again",
                )
    return names


def push_adapter(
    folder: Path,
    repo_id: str,
    *,
    token: str | None = None,
    endpoint: str | None = None,
    private: bool = True,
    revision: str | None = None,
    commit_message: str = "Sanitized adapter (backdoor removal)",
) -> dict[str, str]:
    """Create ``repo_id`` if needed and commit the folder; return the repo and commit URLs."""
    from huggingface_hub import HfApi, constants

    names = check_folder(folder)
    api = HfApi(endpoint=endpoint, token=token)
    # sanitizer.models sets HF_HUB_OFFLINE=1 so nothing is ever *downloaded* at run time; a
    # push the user asked for is the one request that must reach the Hub (uploads only)
    offline = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            revision=revision,
            commit_message=commit_message,
            allow_patterns=names,
        )
    finally:
        constants.HF_HUB_OFFLINE = offline
    return {"repo_url": str(repo), "commit_url": commit.commit_url, "files": str(len(names))}
