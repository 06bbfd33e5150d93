"""Blobs in an S3-compatible object store (AWS S3, MinIO, Ceph RGW, R2, ...), so the API and
GPU workers on other hosts share no disk (``SANITIZER_ARTIFACTS_URL=s3://bucket/prefix``).

boto3, because it is the reference client every S3-compatible server is tested against, and
its transfer manager gives streaming multipart uploads and downloads for large adapters and
merged weights with no code of ours. Endpoint and credentials come from the standard AWS
variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``), like every other AWS tool.

Guarantees, as ``LocalArtifactStore`` gives them:
- no half-written object is ever served: a blob is uploaded under a temporary key, then
  copied to its real key (one atomic server-side operation) and the temporary one deleted;
- the sha256 is computed while the blob is written, stored in the object's metadata, and
  checked when it is read back (``fetch``/``local_copy``; ``open`` checks at end of stream);
- a store that is briefly unavailable is retried with backoff (botocore's standard retry
  mode for each call, and tenacity around whole uploads and downloads for ~a minute).
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import IO, Any, TypeVar

from sanitizer.data import sha256_file  # torch-free, like the rest of jobstore's imports

CHUNK = 1 << 20
T = TypeVar("T")


class IntegrityError(OSError):
    """A blob read back does not have the sha256 recorded when it was written."""


class _Verifying:
    """A read-only stream that hashes what passes through and checks it at the end."""

    def __init__(self, body: Any, expected: str | None, key: str) -> None:
        self.body, self.expected, self.key = body, expected, key
        self.h = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.body.read(n) if n is not None and n >= 0 else self.body.read()
        self.h.update(data)
        if (not data or n is None or n < 0) and self.expected:
            if self.h.hexdigest() != self.expected:
                raise IntegrityError(f"artifact {self.key} does not match its recorded sha256")
            self.expected = None  # checked once
        return data

    def close(self) -> None:
        self.body.close()

    def __enter__(self) -> _Verifying:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class S3ArtifactStore:
    def __init__(self, url: str, *, retry_seconds: float = 60.0) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        if not url.startswith("s3://"):
            raise ValueError(f"an S3 artifacts URL looks like s3://bucket/prefix, got {url!r}")
        bucket, _, prefix = url[5:].partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {url!r}")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.client = boto3.client(
            "s3",
            config=Config(
                signature_version="s3v4",  # pre-signed URLs with SigV4 (X-Amz-*), as S3 wants
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            ),
        )
        # multipart above 64 MiB, 64 MiB parts: streaming, never the whole file in memory
        self.transfer = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20)
        self.retry_seconds = retry_seconds

    # ------------------------------------------------------------------ helpers
    def _key(self, key: str) -> str:
        p = PurePosixPath(key)
        if p.is_absolute() or ".." in p.parts or not p.parts:
            raise ValueError(f"invalid artifact key {key!r}")
        return f"{self.prefix}/{p.as_posix()}" if self.prefix else p.as_posix()

    def _retry(self, fn: Callable[[], T]) -> T:
        """Whole operations retried while the store is unreachable or answers 5xx."""
        import tenacity
        from botocore.exceptions import BotoCoreError, ClientError

        def transient(exc: BaseException) -> bool:
            if isinstance(exc, ClientError):
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                return int(status) >= 500
            return isinstance(exc, BotoCoreError)

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(transient),
            wait=tenacity.wait_exponential(multiplier=0.5, max=8),
            stop=tenacity.stop_after_delay(self.retry_seconds),
            reraise=True,
        )(fn)

    def _missing(self, exc: Exception) -> bool:
        from botocore.exceptions import ClientError

        return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in (
            "404",
            "NoSuchKey",
            "NotFound",
        )

    def _head(self, key: str) -> dict[str, Any]:
        try:
            return self._retry(
                lambda: self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            )
        except Exception as exc:
            if self._missing(exc):
                raise FileNotFoundError(key) from exc
            raise

    # ------------------------------------------------------------------ the protocol
    def put_file(self, key: str, src: Path, *, move: bool = False) -> str | None:
        sha = sha256_file(Path(src))
        tmp = self._key(f".tmp/{uuid.uuid4().hex}")
        final = self._key(key)
        extra = {"Metadata": {"sha256": sha}}

        def upload() -> None:
            self.client.upload_file(
                str(src), self.bucket, tmp, ExtraArgs=extra, Config=self.transfer
            )
            self.client.copy(
                {"Bucket": self.bucket, "Key": tmp},
                self.bucket,
                final,
                ExtraArgs={"Metadata": {"sha256": sha}, "MetadataDirective": "REPLACE"},
                Config=self.transfer,
            )

        try:
            self._retry(upload)
        finally:
            try:
                self.client.delete_object(Bucket=self.bucket, Key=tmp)
            except Exception:  # an orphan under .tmp/ is never served; lifecycle rules sweep it
                pass
        if move:
            Path(src).unlink(missing_ok=True)
        return sha

    def put_bytes(self, key: str, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        self._retry(
            lambda: self.client.put_object(  # one PUT is atomic: no temporary key needed
                Bucket=self.bucket, Key=self._key(key), Body=data, Metadata={"sha256": sha}
            )
        )
        return sha

    def open(self, key: str) -> IO[bytes]:
        try:
            obj = self._retry(
                lambda: self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            )
        except Exception as exc:
            if self._missing(exc):
                raise FileNotFoundError(key) from exc
            raise
        return _Verifying(obj["Body"], obj.get("Metadata", {}).get("sha256"), key)  # type: ignore[return-value]

    def open_range(self, key: str, start: int, end: int) -> IO[bytes]:
        try:
            obj = self._retry(
                lambda: self.client.get_object(
                    Bucket=self.bucket, Key=self._key(key), Range=f"bytes={start}-{end}"
                )
            )
        except Exception as exc:
            if self._missing(exc):
                raise FileNotFoundError(key) from exc
            raise
        return _Verifying(obj["Body"], None, key)  # type: ignore[return-value]  # a part: no hash

    def presign(self, key: str, seconds: int, filename: str) -> str | None:
        """A pre-signed GET (SigV4, valid ``seconds``) that names the download ``filename``.
        Signing is local: it checks neither that the object exists nor who asks, so the API
        calls it only after its own auth and tenant checks."""
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={
                "Bucket": self.bucket,
                "Key": self._key(key),
                "ResponseContentDisposition": f'attachment; filename="{filename}"',
            },
            ExpiresIn=seconds,
        )
        return url

    def fetch(self, key: str, dest: Path) -> Path:
        expected = self._head(key).get("Metadata", {}).get("sha256")
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        self._retry(
            lambda: self.client.download_file(
                self.bucket, self._key(key), str(part), Config=self.transfer
            )
        )
        if expected and sha256_file(part) != expected:
            part.unlink(missing_ok=True)
            raise IntegrityError(f"artifact {key} does not match its recorded sha256 {expected}")
        part.replace(dest)
        return dest

    @contextmanager
    def local_copy(self, key: str) -> Iterator[Path]:
        tmp = Path(tempfile.mkdtemp(prefix="s3copy-"))
        try:
            yield self.fetch(key, tmp / PurePosixPath(key).name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
            return True
        except FileNotFoundError:
            return False

    def size(self, key: str) -> int:
        return int(self._head(key)["ContentLength"])

    def delete_prefix(self, prefix: str) -> None:
        base = self._key(prefix) + "/"
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})

    def list_prefix(self, prefix: str) -> list[tuple[str, int]]:
        base = self._key(prefix) + "/"
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=base
        ):
            for o in page.get("Contents", []):
                rel = o["Key"][len(base) :]
                if rel and not PurePosixPath(rel).name.startswith(".tmp"):
                    out.append((rel, int(o["Size"])))
        return sorted(out)
