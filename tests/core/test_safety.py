"""sanitizer.safety: archive extraction limits and adapter folder checks."""

from __future__ import annotations

import io
import json
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from sanitizer import archives
from sanitizer.archives import extract_archive
from sanitizer.errors import AdapterMismatchError, InputError, UnsafeFileError
from sanitizer.safety import check_adapter_dir, read_safetensors_header

MB = 1 << 20
BASE = "HuggingFaceTB/SmolLM2-135M-Instruct"


# ---------------------------------------------------------------- helpers


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> Path:
    data = data or {}
    with tarfile.open(path, "w:gz") as tf:
        for m in members:
            payload = data.get(m.name)
            if payload is not None:
                m.size = len(payload)
                tf.addfile(m, io.BytesIO(payload))
            else:
                tf.addfile(m)
    return path


def _empty(dest: Path) -> bool:
    return not dest.exists() or not any(dest.iterdir())


def _adapter(folder: Path, **cfg_overrides: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "peft_type": "LORA",
        "base_model_name_or_path": BASE,
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj"],
        "task_type": "CAUSAL_LM",
    }
    cfg.update(cfg_overrides)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    save_file(
        {
            "base_model.model.layers.0.q_proj.lora_A.weight": np.zeros((4, 16), np.float32),
            "base_model.model.layers.0.q_proj.lora_B.weight": np.ones((16, 4), np.float16),
        },
        str(folder / "adapter_model.safetensors"),
    )
    return folder


# ---------------------------------------------------------------- archives


def test_valid_zip_returns_single_top_folder(tmp_path: Path) -> None:
    members = {"adapter/adapter_config.json": b"{}", "adapter/sub/x.txt": b"hello"}
    arc = _zip(tmp_path / "a.zip", members)
    out = extract_archive(arc, tmp_path / "out", max_bytes=MB, max_files=10)
    assert out == tmp_path / "out" / "adapter"
    assert (out / "sub" / "x.txt").read_bytes() == b"hello"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["adapter"]  # no staging left


def test_flat_zip_returns_dest(tmp_path: Path) -> None:
    arc = _zip(tmp_path / "a.zip", {"a.json": b"1", "b.json": b"2", "__MACOSX/._a.json": b"x"})
    out = extract_archive(arc, tmp_path / "out", max_bytes=MB, max_files=10)
    assert out == tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "b.json"]


@pytest.mark.parametrize(
    ("name", "fragment"),
    [("../evil.txt", "'..' component"), ("a/../../evil.txt", "'..' component"),
     ("/etc/evil", "absolute path")],
)  # fmt: skip
def test_zip_path_traversal_refused(tmp_path: Path, name: str, fragment: str) -> None:
    arc = tmp_path / "a.zip"
    with zipfile.ZipFile(arc, "w") as zf:
        zf.writestr("ok.txt", b"fine")
        zf.writestr(zipfile.ZipInfo(name), b"evil")
    dest = tmp_path / "out" / "deep"
    with pytest.raises(UnsafeFileError, match=fragment):
        extract_archive(arc, dest, max_bytes=MB, max_files=10)
    assert _empty(dest)
    assert not (tmp_path / "out" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


def test_zip_bomb_refused_by_declared_size_and_ratio(tmp_path: Path) -> None:
    arc = _zip(tmp_path / "bomb.zip", {"zeros.bin": bytes(50 * MB)})
    assert arc.stat().st_size < MB  # really a bomb
    with pytest.raises(UnsafeFileError, match="declared uncompressed size exceeds the limit"):
        extract_archive(arc, tmp_path / "o1", max_bytes=10 * MB, max_files=10)
    # a generous byte limit: the compression ratio still stops it
    with pytest.raises(UnsafeFileError, match="more than 200x"):
        extract_archive(arc, tmp_path / "o2", max_bytes=100 * MB, max_files=10)
    assert _empty(tmp_path / "o1") and _empty(tmp_path / "o2")


def _patch_sizes(raw: bytearray, declared: int) -> None:
    """Overwrite the uncompressed size in the local and central headers (a lying zip)."""
    local = raw.index(b"PK\x03\x04")
    struct.pack_into("<I", raw, local + 22, declared)
    central = raw.index(b"PK\x01\x02")
    struct.pack_into("<I", raw, central + 24, declared)


def test_header_lying_zip_stopped_while_extracting(tmp_path: Path) -> None:
    arc = _zip(tmp_path / "liar.zip", {"zeros.bin": bytes(50 * MB)})
    raw = bytearray(arc.read_bytes())
    _patch_sizes(raw, 1000)
    arc.write_bytes(bytes(raw))
    assert zipfile.ZipFile(arc).infolist()[0].file_size == 1000  # passes the declared checks
    dest = tmp_path / "out"
    with pytest.raises(UnsafeFileError, match="does not match its data|larger than its header"):
        extract_archive(arc, dest, max_bytes=10 * MB, max_files=10)
    assert _empty(dest)


class _Endless(io.RawIOBase):
    """A member whose data never ends (what a lying header could hide)."""

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        return bytes(n if n and n > 0 else 1 << 16)


def test_stream_counts_actual_bytes(tmp_path: Path) -> None:
    budget = archives._Budget(max_bytes=3 * MB, max_files=10, archive=tmp_path / "x.zip")
    with pytest.raises(UnsafeFileError, match="data actually extracted exceeds the limit"):
        archives._stream(_Endless(), tmp_path / "f", budget, 10**12, "f", None)
    assert (tmp_path / "f").stat().st_size <= 3 * MB
    budget2 = archives._Budget(max_bytes=100 * MB, max_files=10, archive=tmp_path / "x.zip")
    with pytest.raises(UnsafeFileError, match="larger than its header declares"):
        archives._stream(_Endless(), tmp_path / "g", budget2, 5000, "g", None)


def test_too_many_files(tmp_path: Path) -> None:
    arc = _zip(tmp_path / "a.zip", {f"d/{i}.txt": b"x" for i in range(6)})
    with pytest.raises(UnsafeFileError, match="more than 5 entries"):
        extract_archive(arc, tmp_path / "out", max_bytes=MB, max_files=5)


def test_zip_symlink_refused(tmp_path: Path) -> None:
    arc = tmp_path / "a.zip"
    info = zipfile.ZipInfo("link")
    info.create_system = 3
    info.external_attr = (0o120777) << 16  # S_IFLNK
    with zipfile.ZipFile(arc, "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        extract_archive(arc, tmp_path / "out", max_bytes=MB, max_files=10)


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [(tarfile.SYMTYPE, "symbolic link"), (tarfile.LNKTYPE, "hard link"),
     (tarfile.CHRTYPE, "device")],
)  # fmt: skip
def test_tar_links_and_devices_refused(tmp_path: Path, kind: bytes, fragment: str) -> None:
    link = tarfile.TarInfo("adapter/weights")
    link.type = kind
    link.linkname = "/etc/passwd"
    ok = tarfile.TarInfo("adapter/a.txt")
    arc = _tar(tmp_path / "a.tar.gz", [ok, link], {"adapter/a.txt": b"hi"})
    dest = tmp_path / "out"
    with pytest.raises(UnsafeFileError, match=fragment):
        extract_archive(arc, dest, max_bytes=MB, max_files=10)
    assert _empty(dest)


def test_tar_valid_and_traversal_and_bomb(tmp_path: Path) -> None:
    arc = _tar(
        tmp_path / "ok.tar.gz",
        [tarfile.TarInfo("top/a.txt"), tarfile.TarInfo("top/b.txt")],
        {"top/a.txt": b"A", "top/b.txt": b"B"},
    )
    out = extract_archive(arc, tmp_path / "o", max_bytes=MB, max_files=10)
    assert out == tmp_path / "o" / "top" and (out / "b.txt").read_bytes() == b"B"
    bad = _tar(tmp_path / "bad.tar.gz", [tarfile.TarInfo("../x")], {"../x": b"x"})
    with pytest.raises(UnsafeFileError, match="'..' component"):
        extract_archive(bad, tmp_path / "o2", max_bytes=MB, max_files=10)
    bomb = _tar(tmp_path / "bomb.tar.gz", [tarfile.TarInfo("z")], {"z": bytes(50 * MB)})
    with pytest.raises(UnsafeFileError, match="exceeds the limit"):
        extract_archive(bomb, tmp_path / "o3", max_bytes=10 * MB, max_files=10)
    with pytest.raises(UnsafeFileError, match="more than 200x"):
        extract_archive(bomb, tmp_path / "o4", max_bytes=100 * MB, max_files=10)


def test_not_an_archive(tmp_path: Path) -> None:
    p = tmp_path / "x.zip"
    p.write_bytes(b"hello")
    with pytest.raises(InputError, match="neither a zip nor a tar"):
        extract_archive(p, tmp_path / "o", max_bytes=MB, max_files=10)


# ---------------------------------------------------------------- adapters


def test_valid_adapter_accepted(tmp_path: Path) -> None:
    folder = _adapter(tmp_path / "ad")
    info = check_adapter_dir(folder, expected_base_model=BASE)
    assert (info.peft_type, info.base_model, info.r) == ("LORA", BASE, 4)
    assert info.target_modules == ["q_proj", "v_proj"] and info.n_tensors == 2
    assert info.tensors["base_model.model.layers.0.q_proj.lora_B.weight"] == {
        "dtype": "F16",
        "shape": [16, 4],
    }


@pytest.mark.parametrize(
    "config_base",
    [f"/srv/models/{BASE.replace('/', '--')}", "/home/u/SmolLM2-135M-Instruct/",
     f"/hf/hub/models--{BASE.replace('/', '--')}/snapshots/abc123"],
)  # fmt: skip
def test_base_model_path_forms_accepted(tmp_path: Path, config_base: str) -> None:
    folder = _adapter(tmp_path / "ad", base_model_name_or_path=config_base)
    assert check_adapter_dir(folder, expected_base_model=BASE).base_model == config_base


def test_mismatched_base_model(tmp_path: Path) -> None:
    folder = _adapter(tmp_path / "ad", base_model_name_or_path="meta-llama/Llama-2-7b-hf")
    with pytest.raises(AdapterMismatchError) as exc:
        check_adapter_dir(folder, expected_base_model=BASE)
    assert exc.value.message == (
        f"adapter_config.json names base model meta-llama/Llama-2-7b-hf but the job asked for {BASE}"
    )
    assert exc.value.hint and exc.value.code == "adapter_mismatch"


@pytest.mark.parametrize("name", ["adapter_model.bin", "optimizer.pt", "x.ckpt", "state.pkl"])
def test_pickle_weights_refused(tmp_path: Path, name: str) -> None:
    folder = _adapter(tmp_path / "ad")
    (folder / name).write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(UnsafeFileError) as exc:
        check_adapter_dir(folder)
    assert "pickle files are never loaded because unpickling runs arbitrary code" in str(exc.value)
    assert "save_file(torch.load('adapter_model.bin', weights_only=True)" in (exc.value.hint or "")
    assert "safe_serialization=True" in (exc.value.hint or "")


def test_disguised_pickle_refused(tmp_path: Path) -> None:
    folder = _adapter(tmp_path / "ad")
    (folder / "weights.dat").write_bytes(pickle.dumps([1, 2, 3], protocol=4))
    with pytest.raises(UnsafeFileError, match="pickle"):
        check_adapter_dir(folder)


def test_missing_safetensors_and_fields(tmp_path: Path) -> None:
    folder = _adapter(tmp_path / "ad")
    (folder / "adapter_model.safetensors").unlink()
    with pytest.raises(InputError, match="adapter_model.safetensors not found"):
        check_adapter_dir(folder)
    folder2 = tmp_path / "ad2"
    folder2.mkdir()
    (folder2 / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    with pytest.raises(InputError, match="lacks base_model_name_or_path, r, target_modules"):
        check_adapter_dir(folder2)
    folder3 = tmp_path / "ad3"
    folder3.mkdir()
    (folder3 / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match=r"adapter_config.json not found .*found: adapter_model"):
        check_adapter_dir(folder3)


def test_unsupported_peft_type_and_remote_code(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="only LORA"):
        check_adapter_dir(_adapter(tmp_path / "a", peft_type="IA3"))
    with pytest.raises(UnsafeFileError, match="'auto_map' entry"):
        check_adapter_dir(_adapter(tmp_path / "b", auto_map={"AutoModel": "evil.Model"}))
    c = _adapter(tmp_path / "c")
    (c / "config.json").write_text(json.dumps({"trust_remote_code": True}))
    with pytest.raises(UnsafeFileError, match="trust_remote_code"):
        check_adapter_dir(c)


def _header_file(path: Path, header: dict, data: bytes) -> Path:
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    return path


@pytest.mark.parametrize(
    ("header", "data", "fragment"),
    [
        ({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, bytes(4), "outside"),
        ({"t": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, bytes(8), "unknown dtype"),
        ({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, bytes(8), "needs 12"),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, bytes(8), "gap"),
        ({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, bytes(8), "cover 4 of 8"),
        ({"__metadata__": {}}, b"", "no tensors"),
    ],
)
def test_safetensors_header_checks(
    tmp_path: Path, header: dict, data: bytes, fragment: str
) -> None:
    p = _header_file(tmp_path / "adapter_model.safetensors", header, data)
    with pytest.raises(UnsafeFileError, match=fragment):
        read_safetensors_header(p)


def test_safetensors_header_length_lies(tmp_path: Path) -> None:
    p = tmp_path / "w.safetensors"
    p.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(UnsafeFileError, match="does not fit"):
        read_safetensors_header(p)
    p.write_bytes(b"abc")
    with pytest.raises(UnsafeFileError, match="fewer than the 8-byte"):
        read_safetensors_header(p)


def test_core_modules_do_not_import_heavy_packages() -> None:
    code = (
        "import sys; import sanitizer.data, sanitizer.attacks, sanitizer.metrics, "
        "sanitizer.safety, sanitizer.archives, sanitizer.jobspec, sanitizer.data_readers, "
        "sanitizer.report_html, sanitizer.publish; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'fastapi', 'celery', "
        "'pyarrow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
