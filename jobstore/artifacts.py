"""Where file blobs and job outputs live, behind one small interface.

Keys are relative POSIX paths: ``files/<file_id>/<name>``, ``jobs/<job_id>/adapter.zip``,
``jobs/<job_id>/report.json``. Outputs are keyed by job id, so a re-run overwrites and
never mixes with another job. ``LocalArtifactStore`` writes to a temp file in the same
directory, fsyncs it and renames it into place: a crash never leaves a half-written file
under a real key. An object-store implementation needs the methods of ``ArtifactStore``;
the API and the workers use nothing else.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import IO, Protocol

CHUNK = 1 << 20


class ArtifactStore(Protocol):
    def put_file(self, key: str, src: Path, *, move: bool = False) -> str | None:
        """Store ``src`` under ``key`` atomically; return its sha256."""

    def open(self, key: str) -> IO[bytes]:
        """Open the blob for reading (raises FileNotFoundError)."""

    def open_range(self, key: str, start: int, end: int) -> IO[bytes]:
        """Bytes ``start`` to ``end`` (inclusive) of the blob: an HTTP Range answer."""

    def presign(self, key: str, seconds: int, filename: str) -> str | None:
        """A URL that fetches the blob without credentials for ``seconds`` (None: the store
        has no such URLs and the API streams the bytes itself)."""

    def fetch(self, key: str, dest: Path) -> Path:
        """Make the blob available as a local file at ``dest``."""

    def put_bytes(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``key`` atomically; return its sha256."""

    def local_copy(self, key: str) -> AbstractContextManager[Path]:
        """A local file with the blob's bytes and name, for the duration of the block."""

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int: ...

    def delete_prefix(self, prefix: str) -> None:
        """Delete every blob whose key starts with ``prefix/``."""

    def list_prefix(self, prefix: str) -> list[tuple[str, int]]:
        """(key below ``prefix/``, size) of every blob there, sorted."""


def _check_key(key: str) -> PurePosixPath:
    p = PurePosixPath(key)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise ValueError(f"invalid artifact key {key!r}")
    return p


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalArtifactStore:
    """Blobs as files under ``root`` (a shared volume when API and workers are on many hosts)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root.joinpath(*_check_key(key).parts)

    def _write(self, key: str, chunks: Iterator[bytes]) -> str:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
        h = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    h.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
            _fsync_dir(final.parent)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return h.hexdigest()

    def put_file(self, key: str, src: Path, *, move: bool = False) -> str | None:
        """Store ``src`` under ``key``. ``move``: rename it into place (same filesystem; the
        caller already fsynced it and knows its sha256, so None is returned)."""
        if move:
            final = self.path(key)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(src, final)
                _fsync_dir(final.parent)
                return None
            except OSError:  # another filesystem: copy instead
                pass
        with open(src, "rb") as f:
            return self._write(key, iter(lambda: f.read(CHUNK), b""))

    def put_bytes(self, key: str, data: bytes) -> str:
        return self._write(key, iter([data]))

    def open(self, key: str) -> IO[bytes]:
        return open(self.path(key), "rb")

    def open_range(self, key: str, start: int, end: int) -> IO[bytes]:
        f = open(self.path(key), "rb")
        f.seek(start)
        return _Limited(f, end - start + 1)  # type: ignore[return-value]

    def presign(self, key: str, seconds: int, filename: str) -> str | None:
        return None

    def fetch(self, key: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path(key), dest)
        return dest

    @contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        """The blob's own file (no copy is needed on a local disk)."""
        path = self.path(key)
        if not path.is_file():
            raise FileNotFoundError(key)
        yield path

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def list_prefix(self, prefix: str) -> list[tuple[str, int]]:
        base = self.path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            (p.relative_to(base).as_posix(), p.stat().st_size)
            for p in base.rglob("*")
            if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".tmp"))
        )


class _Limited:
    """A file read up to ``n`` bytes."""

    def __init__(self, f: IO[bytes], n: int) -> None:
        self.f, self.left = f, n

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        data = self.f.read(self.left if n < 0 else min(n, self.left))
        self.left -= len(data)
        return data

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> _Limited:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def get_store() -> ArtifactStore:
    from jobstore.settings import get_settings

    settings = get_settings()
    if settings.artifacts_url:
        return _s3_store(settings.artifacts_url)
    return LocalArtifactStore(settings.artifacts_path)


@lru_cache(maxsize=4)
def _s3_store(url: str) -> ArtifactStore:
    from jobstore.s3store import S3ArtifactStore  # boto3 only where the setting asks for it

    return S3ArtifactStore(url)
