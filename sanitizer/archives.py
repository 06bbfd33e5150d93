"""Unpacking untrusted archives (zip, tar, tar.gz) safely: member names checked (no absolute, '..', link or over-long paths), bytes counted as written against the declared and a total budget, compression bombs refused, everything into a staging folder removed on failure. Torch-free."""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO

from sanitizer.errors import InputError, UnsafeFileError

CHUNK = 1 << 16

MAX_RATIO = 200  # uncompressed / compressed, checked on members over RATIO_MIN_BYTES

RATIO_MIN_BYTES = 1 << 20

SKIPPED_PREFIXES = ("__MACOSX/",)  # macOS resource forks: never extracted


def _check_member_name(name: str) -> str | None:
    """The member's relative POSIX path, or None for entries to skip; raise if unsafe."""
    if name.startswith(SKIPPED_PREFIXES):
        return None
    if "\x00" in name:
        raise UnsafeFileError(f"archive entry {name!r} has a NUL byte in its name")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        raise UnsafeFileError(
            f"archive entry '{name}' has an absolute path; refusing to extract",
            hint="re-create the archive with relative paths (e.g. `cd folder && zip -r ../a.zip .`)",
        )
    parts = [p for p in PurePosixPath(norm).parts if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeFileError(
            f"archive entry '{name}' contains a '..' component (path traversal); refusing "
            "to extract",
            hint="re-create the archive with paths inside one folder",
        )
    return "/".join(parts) or None


MAX_NAME_BYTES = 255  # one path component (ext4, APFS, NTFS)

MAX_PATH_BYTES = 1024


class _Budget:
    def __init__(self, max_bytes: int, max_files: int, archive: Path) -> None:
        self.max_bytes, self.max_files, self.archive = max_bytes, max_files, archive
        self.written = 0
        self.entries = 0
        self.seen: set[str] = set()
        self.files: set[str] = set()
        self.dirs: set[str] = set()

    def entry(self, rel: str, is_dir: bool = False) -> None:
        self.entries += 1
        if self.entries > self.max_files:
            raise UnsafeFileError(
                f"{self.archive.name} holds more than {self.max_files} entries; refusing to "
                "extract",
                hint="upload only the adapter folder (adapter_config.json and "
                "adapter_model.safetensors)",
            )
        if rel in self.seen:
            raise UnsafeFileError(f"{self.archive.name} holds '{rel}' twice; refusing to extract")
        parts = rel.split("/")
        long = [p for p in parts if len(p.encode()) > MAX_NAME_BYTES]
        if long or len(rel.encode()) > MAX_PATH_BYTES:
            raise UnsafeFileError(
                f"archive entry '{rel[:80]}…' has a name longer than the file system allows "
                f"({MAX_NAME_BYTES} bytes per name, {MAX_PATH_BYTES} per path)",
                hint="re-create the archive with the adapter's own file names",
            )
        # one name cannot be a file and a folder: 'x' and 'x/y' in one archive
        clash = (not is_dir and rel in self.dirs) or any(
            "/".join(parts[:i]) in self.files for i in range(1, len(parts))
        )
        if clash:
            raise UnsafeFileError(
                f"{self.archive.name} holds '{rel}' and a file of the same name as it or its "
                "folder; refusing to extract",
                hint="re-create the archive from the adapter folder",
            )
        self.seen.add(rel)
        (self.dirs if is_dir else self.files).add(rel)
        self.dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))

    def too_big(self, what: str) -> UnsafeFileError:
        return UnsafeFileError(
            f"{self.archive.name}: {what} exceeds the limit of {self.max_bytes} bytes "
            "(possible zip bomb); refusing to extract",
            hint="upload a smaller archive (only the adapter files)",
        )


def _stream(src: IO[bytes], dst: Path, budget: _Budget, declared: int, name: str,
            compressed: int | None) -> None:  # fmt: skip
    member_bytes = 0
    with open(dst, "xb") as out:
        while True:
            # read at most one byte past what the budget allows, so a bomb stops right there
            block = src.read(min(CHUNK, budget.max_bytes - budget.written + 1))
            if not block:
                break
            member_bytes += len(block)
            budget.written += len(block)
            if budget.written > budget.max_bytes:
                raise budget.too_big("the data actually extracted")
            if member_bytes > declared:
                raise UnsafeFileError(
                    f"archive entry '{name}' is larger than its header declares ({declared} "
                    "bytes); the archive is corrupt or forged"
                )
            if (
                compressed is not None
                and member_bytes > RATIO_MIN_BYTES
                and member_bytes > MAX_RATIO * max(1, compressed)
            ):
                raise UnsafeFileError(
                    f"archive entry '{name}' expands more than {MAX_RATIO}x "
                    f"({compressed} compressed bytes); refusing a likely zip bomb"
                )
            out.write(block)


def _extract_zip(archive: Path, staging: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        plan: list[tuple[zipfile.ZipInfo, str]] = []
        declared_total = 0
        for info in infos:
            rel = _check_member_name(info.filename)
            if rel is None:
                continue
            mode = info.external_attr >> 16
            if mode and stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                kind = "a symbolic link" if stat.S_ISLNK(mode) else "a special file"
                raise UnsafeFileError(
                    f"archive entry '{info.filename}' is {kind}; links and device files are "
                    "refused",
                    hint="archive the real files instead of links",
                )
            budget.entry(rel, info.is_dir())
            if info.is_dir():
                continue
            declared_total += info.file_size
            if declared_total > budget.max_bytes:
                raise budget.too_big("the declared uncompressed size")
            if info.file_size > RATIO_MIN_BYTES and info.file_size > MAX_RATIO * max(
                1, info.compress_size
            ):
                raise UnsafeFileError(
                    f"archive entry '{info.filename}' would expand {info.file_size} bytes from "
                    f"{info.compress_size} (more than {MAX_RATIO}x); refusing a likely zip bomb"
                )
            plan.append((info, rel))
        for info, rel in plan:
            dst = staging / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src:
                    _stream(src, dst, budget, info.file_size, info.filename, info.compress_size)
            except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
                if isinstance(exc, UnsafeFileError):
                    raise
                raise UnsafeFileError(
                    f"archive entry '{info.filename}' cannot be extracted ({exc}); its header "
                    "does not match its data (corrupt or forged archive)"
                ) from exc
        for info in infos:
            rel = _check_member_name(info.filename)
            if rel and info.is_dir():
                (staging / rel).mkdir(parents=True, exist_ok=True)


def _extract_tar(archive: Path, staging: Path, budget: _Budget) -> None:
    archive_size = max(1, archive.stat().st_size)
    declared_total = 0
    # streaming mode ("r|*"): members are checked and written one at a time, so a bomb is
    # stopped as soon as a limit is crossed instead of after decompressing everything
    with tarfile.open(archive, mode="r|*") as tf:
        for m in tf:
            rel = _check_member_name(m.name)
            if rel is None:
                continue
            if not (m.isreg() or m.isdir()):
                kind = (
                    "a symbolic link"
                    if m.issym()
                    else "a hard link"
                    if m.islnk()
                    else "a device or special file"
                )
                raise UnsafeFileError(
                    f"archive entry '{m.name}' is {kind}; links and device files are refused",
                    hint="archive the real files instead of links",
                )
            budget.entry(rel, m.isdir())
            dst = staging / rel
            if m.isdir():
                dst.mkdir(parents=True, exist_ok=True)
                continue
            declared_total += m.size
            if declared_total > budget.max_bytes:
                raise budget.too_big("the declared uncompressed size")
            if declared_total > RATIO_MIN_BYTES and declared_total > MAX_RATIO * archive_size:
                raise UnsafeFileError(
                    f"{archive.name} would expand to more than {MAX_RATIO}x its size "
                    f"({archive_size} bytes); refusing a likely compression bomb"
                )
            dst.parent.mkdir(parents=True, exist_ok=True)
            src = tf.extractfile(m)
            assert src is not None
            _stream(src, dst, budget, m.size, m.name, None)


def extract_archive(archive: Path, dest: Path, max_bytes: int, max_files: int) -> Path:
    """Safely extract a zip or tar(.gz) ``archive`` into ``dest``.

    Returns the single top-level folder when the archive holds exactly one, else ``dest``.
    Raises UnsafeFileError (nothing is left in ``dest``) when any check fails.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise InputError(f"archive not found: {archive}")
    if zipfile.is_zipfile(archive):
        extractor = _extract_zip
    elif tarfile.is_tarfile(archive):
        extractor = _extract_tar
    else:
        raise InputError(
            f"{archive.name} is neither a zip nor a tar archive",
            hint="upload a .zip or .tar.gz of the adapter folder",
            code="invalid_archive",
        )
    dest.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest))
    budget = _Budget(max_bytes, max_files, archive)
    try:
        try:
            extractor(archive, staging, budget)
        except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
            raise UnsafeFileError(f"{archive.name} is corrupt ({exc})") from exc
        top = list(staging.iterdir())
        for child in top:
            if (dest / child.name).exists():
                raise InputError(
                    f"{dest / child.name} already exists; extract into an empty folder"
                )
        for child in top:
            os.replace(child, dest / child.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if len(top) == 1 and (dest / top[0].name).is_dir():
        return dest / top[0].name
    return dest
