"""Archives on the client side: zip a PEFT folder for upload; verify and unpack a download.

Deliberately independent of ``sanitizer`` (the SDK installs without the library).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from sanitizer_client.errors import ChecksumMismatchError, SanitizerClientError

MANIFEST = "manifest.json"
_CHUNK = 1 << 20
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # zip entries get a fixed date: same folder -> same sha256


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_stream(f: IO[bytes]) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: f.read(_CHUNK), b""):
        h.update(chunk)
    return h.hexdigest()


def zip_directory(directory: Path) -> Path:
    """Zip the regular files of ``directory`` (recursively, sorted, fixed timestamps) into a
    temporary file and return its path; the caller deletes it. Symlinks are refused."""
    directory = Path(directory)
    fd, name = tempfile.mkstemp(prefix=f"{directory.name}-", suffix=".zip")
    os.close(fd)
    try:
        with zipfile.ZipFile(name, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(directory.rglob("*")):
                if path.is_symlink():
                    raise SanitizerClientError(f"{path} is a symlink; copy the file instead")
                if not path.is_file():
                    continue
                info = zipfile.ZipInfo(path.relative_to(directory).as_posix(), _FIXED_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                with open(path, "rb") as src, zf.open(info, "w") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def _safe_name(name: str) -> str:
    p = PurePosixPath(name)
    drive = bool(p.parts) and ":" in p.parts[0]
    if p.is_absolute() or ".." in p.parts or "\\" in name or drive:
        raise SanitizerClientError(f"refusing archive member with unsafe path: {name!r}")
    return p.as_posix()


def _members(archive: Path) -> tuple[str, list[str]]:
    """('zip'|'tar', regular file names) after checking every member is a safe regular file."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            names = []
            for info in zf.infolist():
                if info.is_dir():
                    continue
                if (info.external_attr >> 16) & 0o170000 == 0o120000:
                    raise SanitizerClientError(f"refusing symlink in archive: {info.filename}")
                names.append(_safe_name(info.filename))
            return "zip", names
    try:
        with tarfile.open(archive) as tf:
            names = []
            for m in tf.getmembers():
                if m.isdir():
                    continue
                if not m.isfile():
                    raise SanitizerClientError(f"refusing non-regular archive member: {m.name}")
                names.append(_safe_name(m.name))
            return "tar", names
    except tarfile.TarError as e:
        raise SanitizerClientError(f"{archive} is neither a zip nor a tar archive") from e


@contextlib.contextmanager
def _opener(archive: Path, kind: str) -> Iterator[Callable[[str], IO[bytes]]]:
    """A function that opens one member by name, valid inside the ``with``."""
    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            yield zf.open
    else:
        with tarfile.open(archive) as tf:

            def open_tar(name: str) -> IO[bytes]:
                f = tf.extractfile(name)
                if f is None:
                    raise SanitizerClientError(f"{name} is not a regular file")
                return f

            yield open_tar


def _manifest_hashes(manifest: dict[str, Any]) -> dict[str, str]:
    """{file name: sha256} from the service's manifest: ``{"files": {name: sha256}, ...}``."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in files.items()
    ):
        raise ChecksumMismatchError(
            f"{MANIFEST} has no 'files' mapping of file name to sha256; cannot verify"
        )
    return {k: v.lower() for k, v in files.items()}


def verify_archive(archive: Path) -> tuple[dict[str, Any], list[str]]:
    """Check every file of the archive against manifest.json inside it.

    Raises ChecksumMismatchError when the manifest is missing, a listed file is missing or
    differs, or the archive holds a file the manifest does not list.
    """
    kind, names = _members(archive)
    if MANIFEST not in names:
        raise ChecksumMismatchError(f"the archive has no {MANIFEST} to verify against")
    with _opener(archive, kind) as open_member:
        with open_member(MANIFEST) as f:
            try:
                manifest = json.loads(f.read())
            except json.JSONDecodeError as e:
                raise ChecksumMismatchError(f"{MANIFEST} is not valid JSON: {e}") from e
        expected = _manifest_hashes(manifest)
        files = [n for n in names if n != MANIFEST]
        unlisted = sorted(set(files) - set(expected))
        if unlisted:
            raise ChecksumMismatchError(f"archive holds files not in {MANIFEST}: {unlisted}")
        missing = sorted(set(expected) - set(files))
        if missing:
            raise ChecksumMismatchError(
                f"{MANIFEST} lists files missing from the archive: {missing}"
            )
        for name in files:
            with open_member(name) as f:
                actual = sha256_stream(f)
            if actual != expected[name]:
                raise ChecksumMismatchError(
                    f"{name}: sha256 {actual} does not match {MANIFEST} ({expected[name]})",
                    expected=expected[name],
                    actual=actual,
                )
    return manifest, files


def extract_archive(archive: Path, dest: Path) -> list[str]:
    """Unpack regular files only, refusing absolute/``..`` paths and links."""
    kind, names = _members(archive)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with _opener(archive, kind) as open_member:
        for name in names:
            target = (dest / name).resolve()
            if root not in target.parents:
                raise SanitizerClientError(f"refusing archive member outside {dest}: {name!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with open_member(name) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)
    return names
