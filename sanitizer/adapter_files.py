"""Adapter folders as files: content hashes, and two LoRA adapters written as one.

Torch (safetensors) but no model: these read and write adapter folders only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch


def sha256_of_dir(path: Path, pattern: str = "*.safetensors") -> str:
    """One digest over the weight files of a folder (name + content, sorted)."""
    h = hashlib.sha256()
    for f in sorted(Path(path).glob(pattern)):
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def file_hashes(folder: Path) -> dict[str, str]:
    """sha256 of each file directly in ``folder``, by name."""
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.iterdir())}


def combine_lora_into_one(
    base_adapter_dir: Path, new_adapter_dir: Path, out_dir: Path, base_scale: float = 1.0
) -> None:
    """Write one adapter equal to (uploaded adapter + fresh sanitizing adapter) over the base.
    ``base_scale``: the fraction of the uploaded adapter that was merged (``adapter_scale``).

    In ``merge_fresh`` mode the fresh LoRA was trained on base+uploaded weights, so on its
    own it is not a delta of the base model. Two LoRA deltas ``s1 B1 A1 + s2 B2 A2`` are
    exactly the single LoRA ``[B1 s1/s | B2 s2/s] [A1; A2]`` with rank r1+r2 and scale s;
    heads trained whole (modules_to_save) are taken from the new adapter.
    """
    from safetensors.torch import load_file, save_file

    c1 = json.loads((Path(base_adapter_dir) / "adapter_config.json").read_text())
    c2 = json.loads((Path(new_adapter_dir) / "adapter_config.json").read_text())
    w1 = load_file(str(Path(base_adapter_dir) / "adapter_model.safetensors"))
    w2 = load_file(str(Path(new_adapter_dir) / "adapter_model.safetensors"))
    s1 = base_scale * c1["lora_alpha"] / c1["r"]
    s2 = c2["lora_alpha"] / c2["r"]
    r = c1["r"] + c2["r"]
    alpha = r  # scale 1: the per-adapter scales are folded into B
    out: dict[str, torch.Tensor] = {}
    prefixes = {
        k[: -len(".lora_A.weight")] for k in list(w1) + list(w2) if k.endswith(".lora_A.weight")
    }
    for p in sorted(prefixes):
        a_parts, b_parts = [], []
        for w, s, rr in ((w1, s1, c1["r"]), (w2, s2, c2["r"])):
            a, b = w.get(p + ".lora_A.weight"), w.get(p + ".lora_B.weight")
            if a is None:  # module not targeted by this adapter: contributes zero
                other = w2 if w is w1 else w1
                ref_a, ref_b = other[p + ".lora_A.weight"], other[p + ".lora_B.weight"]
                a = torch.zeros(rr, ref_a.shape[1], dtype=ref_a.dtype)
                b = torch.zeros(ref_b.shape[0], rr, dtype=ref_b.dtype)
            a_parts.append(a)
            b_parts.append(b * s)
        out[p + ".lora_A.weight"] = torch.cat(a_parts, 0).contiguous()
        out[p + ".lora_B.weight"] = torch.cat(b_parts, 1).contiguous()
    for k, v in {**w1, **w2}.items():  # heads and other whole modules: the new adapter wins
        if ".lora_A." not in k and ".lora_B." not in k:
            out[k] = w2.get(k, v).contiguous()
    cfg = dict(c2)
    cfg["r"], cfg["lora_alpha"] = r, alpha
    cfg["target_modules"] = sorted(set(c1["target_modules"]) | set(c2["target_modules"]))
    cfg["modules_to_save"] = (
        sorted(set(c1.get("modules_to_save") or []) | set(c2.get("modules_to_save") or [])) or None
    )
    cfg["lora_dropout"] = 0.0
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(out, str(out_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out_dir / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    meta = Path(new_adapter_dir) / "sanitizer_adapter.json"
    if meta.exists():
        (out_dir / "sanitizer_adapter.json").write_text(meta.read_text())
