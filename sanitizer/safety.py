"""Checks on uploaded files before anything reads them. Torch-free.

- ``extract_archive``: zip / tar(.gz/.bz2/.xz) extraction that refuses absolute paths, ``..``
  components, links and device files, too many entries, and bombs - by the sizes the headers
  declare *and* by counting the bytes actually written while streaming, so an archive whose
  headers lie is stopped during extraction. Everything is extracted into a staging folder that
  is removed on failure, so a refused archive leaves nothing behind.
- ``check_adapter_dir``: a PEFT LoRA folder with ``adapter_config.json`` and
  ``adapter_model.safetensors`` only. Pickle-based weights are never loaded (unpickling runs
  arbitrary code). The safetensors header is validated without torch.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from sanitizer.errors import AdapterMismatchError, InputError, UnsafeFileError

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}
CONVERT_HINT = (
    "convert the weights to safetensors on a trusted machine, e.g. "
    '`python -c "from safetensors.torch import save_file; import torch; '
    "save_file(torch.load('adapter_model.bin', weights_only=True), "
    "'adapter_model.safetensors')\"`, or save the adapter with "
    "`model.save_pretrained(dir, safe_serialization=True)`"
)
SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
MAX_HEADER_BYTES = 100 * 2**20
SUPPORTED_PEFT_TYPES = {"LORA"}
REMOTE_CODE_KEYS = {"auto_map", "trust_remote_code", "custom_pipelines"}


# ---------------------------------------------------------------- archives


# ---------------------------------------------------------------- adapters


@dataclass(frozen=True)
class AdapterInfo:
    path: Path
    peft_type: str
    base_model: str
    r: int
    lora_alpha: float | None
    target_modules: list[str] | str
    task_type: str | None
    modules_to_save: list[str] | None
    weights_file: Path
    tensors: dict[str, dict[str, Any]] = field(repr=False)  # name -> {"dtype", "shape"}

    @property
    def n_tensors(self) -> int:
        return len(self.tensors)


def _is_pickle(path: Path) -> bool:
    """Pickle streams (protocol 2+) and torch.save zip archives (which hold data.pkl)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
            return True
        if head[:2] == b"PK" and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                return any(n.endswith(".pkl") for n in zf.namelist())
    except OSError:
        return False
    return False


def _refuse_pickles(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            raise UnsafeFileError(
                f"'{p.relative_to(root)}' in the adapter folder is a symbolic link; refusing it",
                hint="copy the real file into the folder",
            )
        if not p.is_file():
            continue
        if p.suffix.lower() in PICKLE_SUFFIXES or (
            p.suffix.lower() not in {".json", ".safetensors", ".md", ".txt"} and _is_pickle(p)
        ):
            raise UnsafeFileError(
                f"'{p.relative_to(root)}' is a pickle-format file; pickle files are never loaded "
                "because unpickling runs arbitrary code",
                hint=CONVERT_HINT + ", then upload only adapter_config.json and "
                "adapter_model.safetensors",
            )


def _refuse_remote_code(obj: Any, file: str) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in REMOTE_CODE_KEYS and v:
                raise UnsafeFileError(
                    f"{file} has a '{k}' entry (custom code); remote code is never run",
                    hint=f"remove '{k}' from {file}; only standard PEFT LoRA adapters are accepted",
                )
            _refuse_remote_code(v, file)
    elif isinstance(obj, list):
        for v in obj:
            _refuse_remote_code(v, file)


def read_safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """Validate a safetensors file's header against the file size; return name -> tensor info.

    Layout: 8-byte little-endian header length N, N bytes of JSON, then the data buffer. Every
    tensor's ``data_offsets`` must lie inside the buffer, match dtype size x shape, and the
    tensors must cover the buffer without gaps or overlaps.
    """
    size = path.stat().st_size
    name = path.name

    def bad(msg: str) -> UnsafeFileError:
        return UnsafeFileError(
            f"{name} is not a valid safetensors file: {msg}",
            hint="re-save the adapter with `model.save_pretrained(dir, safe_serialization=True)`",
        )

    if size < 8:
        raise bad(f"it has {size} bytes, fewer than the 8-byte header length")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > size - 8 or n > MAX_HEADER_BYTES:
            raise bad(f"header length {n} does not fit in a file of {size} bytes")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise bad(f"the header is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    data_size = size - 8 - n
    tensors: dict[str, dict[str, Any]] = {}
    spans: list[tuple[int, int, str]] = []
    for key, t in header.items():
        if key == "__metadata__":
            if not isinstance(t, dict) or not all(isinstance(v, str) for v in t.values()):
                raise bad("__metadata__ must map strings to strings")
            continue
        if not isinstance(t, dict) or not {"dtype", "shape", "data_offsets"} <= t.keys():
            raise bad(f"tensor '{key}' lacks dtype, shape or data_offsets")
        dtype, shape, offs = t["dtype"], t["shape"], t["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise bad(f"tensor '{key}' has unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise bad(f"tensor '{key}' has an invalid shape {shape!r}")
        if (
            not isinstance(offs, list)
            or len(offs) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)
            or not 0 <= offs[0] <= offs[1] <= data_size
        ):
            raise bad(f"tensor '{key}' has data_offsets {offs!r} outside the {data_size}-byte data")
        expected = math.prod(shape) * SAFETENSORS_DTYPES[dtype]
        if offs[1] - offs[0] != expected:
            raise bad(
                f"tensor '{key}' spans {offs[1] - offs[0]} bytes but {dtype} {shape} needs "
                f"{expected}"
            )
        spans.append((offs[0], offs[1], key))
        tensors[key] = {"dtype": dtype, "shape": shape}
    if not tensors:
        raise bad("it holds no tensors")
    pos = 0
    for begin, end, key in sorted(spans):
        if begin != pos:
            raise bad(f"tensor '{key}' starts at byte {begin}, expected {pos} (gap or overlap)")
        pos = end
    if pos != data_size:
        raise bad(f"the tensors cover {pos} of {data_size} data bytes")
    return tensors


def _model_id_matches(config_value: str, expected: str) -> bool:
    if config_value == expected:
        return True
    if config_value.rstrip("/") == expected.rstrip("/"):
        return True
    folder = PurePosixPath(config_value.replace("\\", "/").rstrip("/"))
    flat = expected.replace("/", "--")
    short = expected.rsplit("/", 1)[-1]
    names = {flat, short, f"models--{flat}"}
    if folder.name in names:
        return True
    # HF hub cache layout: .../models--org--name/snapshots/<revision>
    parts = folder.parts
    return len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3] == f"models--{flat}"


def check_adapter_dir(path: Path, expected_base_model: str | None = None) -> AdapterInfo:
    """Validate a PEFT LoRA adapter folder without loading any weights."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"adapter folder not found: {path}", code="invalid_adapter")
    _refuse_pickles(path)
    cfg_path = path / "adapter_config.json"
    if not cfg_path.is_file():
        found = ", ".join(sorted(p.name for p in path.iterdir())) or "nothing"
        raise InputError(
            f"adapter_config.json not found in the adapter folder (found: {found})",
            hint="upload the folder written by PEFT's save_pretrained",
            code="invalid_adapter",
        )
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(
            f"adapter_config.json is not valid JSON ({exc})", code="invalid_adapter"
        ) from exc
    if not isinstance(cfg, dict):
        raise InputError("adapter_config.json must be a JSON object", code="invalid_adapter")
    for jf in sorted(path.rglob("*.json")):
        if jf == cfg_path:
            obj: Any = cfg
        else:
            try:
                obj = json.loads(jf.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise InputError(
                    f"{jf.relative_to(path)} is not valid JSON ({exc})", code="invalid_adapter"
                ) from exc
        _refuse_remote_code(obj, jf.name)

    missing = [
        k for k in ("peft_type", "base_model_name_or_path", "r", "target_modules") if k not in cfg
    ]
    if missing:
        raise InputError(
            f"adapter_config.json lacks {', '.join(missing)}",
            hint="save the adapter with PEFT's save_pretrained, which writes these fields",
            code="invalid_adapter",
        )
    peft_type = str(cfg["peft_type"]).upper()
    if peft_type not in SUPPORTED_PEFT_TYPES:
        raise InputError(
            f"adapter_config.json has peft_type {cfg['peft_type']!r}; only LORA adapters are "
            "supported",
            code="invalid_adapter",
        )
    base = cfg["base_model_name_or_path"]
    if not isinstance(base, str) or not base.strip():
        raise InputError(
            "adapter_config.json has an empty base_model_name_or_path",
            hint="set it to the base model id, e.g. 'HuggingFaceTB/SmolLM2-135M-Instruct'",
            code="invalid_adapter",
        )
    r = cfg["r"]
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        raise InputError(f"adapter_config.json has r={r!r}; r must be a positive integer",
                         code="invalid_adapter")  # fmt: skip
    tm = cfg["target_modules"]
    if not (
        (isinstance(tm, str) and tm)
        or (isinstance(tm, list) and tm and all(isinstance(t, str) and t for t in tm))
    ):
        raise InputError(
            f"adapter_config.json has target_modules={tm!r}; it must name the adapted modules",
            code="invalid_adapter",
        )

    weights = path / "adapter_model.safetensors"
    if not weights.is_file():
        raise InputError(
            "adapter_model.safetensors not found in the adapter folder",
            hint=CONVERT_HINT,
            code="invalid_adapter",
        )
    tensors = read_safetensors_header(weights)

    if expected_base_model is not None and not _model_id_matches(base, expected_base_model):
        raise AdapterMismatchError(
            f"adapter_config.json names base model {base} but the job asked for "
            f"{expected_base_model}",
            hint=f"submit the job with base model {base}, or upload an adapter trained on "
            f"{expected_base_model}",
        )
    return AdapterInfo(
        path=path,
        peft_type=peft_type,
        base_model=base,
        r=r,
        lora_alpha=cfg.get("lora_alpha"),
        target_modules=tm,
        task_type=cfg.get("task_type"),
        modules_to_save=cfg.get("modules_to_save"),
        weights_file=weights,
        tensors=tensors,
    )


def model_tensor_shapes(model_dir: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a model folder's ``*.safetensors`` files, from their headers
    only (no weights read, nothing unpickled). Empty when the folder holds none."""
    shapes: dict[str, tuple[int, ...]] = {}
    for f in sorted(Path(model_dir).glob("*.safetensors")):
        for name, meta in read_safetensors_header(f).items():
            shapes[name] = tuple(int(d) for d in meta.get("shape", []))
    return shapes


def _lora_module(tensor: str) -> tuple[str, str] | None:
    """('encoder.layer.0.attention.self.query', 'lora_A') for a LoRA tensor name, else None."""
    name = tensor.removeprefix("base_model.model.")
    for part in ("lora_A", "lora_B"):
        at = name.find(f".{part}.")
        if at > 0:
            return name[:at], part
    return None


def check_adapter_fits(info: AdapterInfo, model_dir: Path) -> None:
    """Raise AdapterMismatchError when the adapter's LoRA tensors name modules the base model
    does not have, or have shapes that cannot sit on them. Reads safetensors headers only;
    a base model stored otherwise is not checked here (loading it checks)."""
    base = model_tensor_shapes(model_dir)
    if not base:
        return
    weights = {n.removesuffix(".weight"): s for n, s in base.items() if n.endswith(".weight")}

    def find(module: str) -> tuple[int, ...] | None:
        if module in weights:
            return weights[module]
        for b, s in weights.items():  # a prefix differs: 'bert.encoder...' vs 'encoder...'
            if b.endswith("." + module) or module.endswith("." + b):
                return s
        return None

    missing: list[str] = []
    wrong: list[str] = []
    for tensor, meta in info.tensors.items():
        found = _lora_module(tensor)
        if found is None:
            continue
        module, part = found
        shape = find(module)
        if shape is None:
            missing.append(module)
            continue
        lora = [int(d) for d in meta.get("shape", [])]
        if len(shape) == 2 and len(lora) == 2:
            dim = lora[1] if part == "lora_A" else lora[0]
            if dim not in shape:
                wrong.append(f"{tensor} {tuple(lora)} on {module} {shape}")
    if missing:
        names = sorted(set(missing))
        raise AdapterMismatchError(
            f"the adapter adapts {len(names)} module(s) the base model does not have, e.g. "
            f"{', '.join(names[:3])}",
            hint="upload an adapter trained on this base model (its adapter_config.json names "
            f"{info.base_model}); target_modules: {info.target_modules}",
        )
    if wrong:
        raise AdapterMismatchError(
            f"{len(wrong)} LoRA tensor(s) do not fit the base model's weights, e.g. {wrong[0]}",
            hint="the adapter was trained on a model of another size; upload one trained on "
            "this base model",
        )
