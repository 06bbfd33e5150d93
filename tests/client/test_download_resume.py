"""Issue 25 item 3, the client side: a download broken mid-stream resumes with ``Range`` and
is verified whole; a 307 to a pre-signed URL is followed without sending the API key to the
object store, and the archive is still checked against the API's X-Content-SHA256.

The transport is httpx's MockTransport (the server side of Range is tested against the real
app in tests/service/test_api.py, the pre-signed redirect against a real S3 server in
tests/service/test_s3store.py)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from sanitizer_client import AsyncClient, Client
from sanitizer_client.errors import ChecksumMismatchError
from tests.client.stub_service import adapter_archive

PAYLOAD = adapter_archive({"adapter_model.safetensors": os.urandom(300_000)})
SHA = hashlib.sha256(PAYLOAD).hexdigest()
CUT = 100_000


class BrokenSync(httpx.SyncByteStream):
    def __iter__(self) -> Iterator[bytes]:
        yield PAYLOAD[:CUT]
        raise httpx.ReadError("connection reset by peer")


class BrokenAsync(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield PAYLOAD[:CUT]
        raise httpx.ReadError("connection reset by peer")


def resuming_server(
    seen: list[httpx.Request], broken: httpx.SyncByteStream | httpx.AsyncByteStream
):  # type: ignore[no-untyped-def]
    """First answer breaks after CUT bytes; later ones honour Range like the real API."""

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        headers = {"x-content-sha256": SHA, "accept-ranges": "bytes"}
        rng = request.headers.get("range")
        if len(seen) == 1:
            assert rng is None
            return httpx.Response(200, headers=headers, stream=broken)
        assert rng is not None, "the retry did not resume"
        start = int(rng.removeprefix("bytes=").rstrip("-"))
        headers["content-range"] = f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}"
        return httpx.Response(206, headers=headers, content=PAYLOAD[start:])

    return handler


def test_a_broken_download_resumes_with_range(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(resuming_server(seen, BrokenSync()))
    with Client("http://api.test", "sk_k_s", transport=transport, backoff_base=0.01) as c:
        got = c.jobs.download_adapter("job_1", tmp_path / "a.zip")
    assert [r.headers.get("range") for r in seen] == [None, f"bytes={CUT}-"]
    assert got.verified and got.archive_sha256 == SHA
    assert (tmp_path / "a.zip").read_bytes() == PAYLOAD


def test_the_async_client_resumes_too(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(resuming_server(seen, BrokenAsync()))

    async def run() -> None:
        async with AsyncClient(
            "http://api.test", "sk_k_s", transport=transport, backoff_base=0.01
        ) as c:
            got = await c.jobs.download_adapter("job_1", tmp_path / "out")
        assert got.verified and got.archive_sha256 == SHA
        assert (tmp_path / "out" / "adapter_model.safetensors").exists()

    asyncio.run(run())
    assert [r.headers.get("range") for r in seen] == [None, f"bytes={CUT}-"]


def redirecting_server(seen: list[httpx.Request], body: bytes):  # type: ignore[no-untyped-def]
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "api.test":
            return httpx.Response(
                307,
                headers={
                    "location": "http://store.test/bucket/jobs/job_1/adapter.zip?X-Amz-Signature=x",
                    "x-content-sha256": SHA,
                },
            )
        return httpx.Response(200, content=body)  # an object store sends no X-Content-SHA256

    return handler


def test_a_presigned_redirect_is_followed_without_the_api_key(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []
    transport = httpx.MockTransport(redirecting_server(seen, PAYLOAD))
    with Client("http://api.test", "sk_k_s", transport=transport) as c:
        got = c.jobs.download_adapter("job_1", tmp_path / "a.zip")
    assert got.verified and got.archive_sha256 == SHA
    assert [r.url.host for r in seen] == ["api.test", "store.test"]
    assert seen[0].headers["authorization"] == "Bearer sk_k_s"
    assert "authorization" not in seen[1].headers  # the key never reaches the store


def test_a_tampered_object_behind_a_redirect_is_refused(tmp_path: Path) -> None:
    transport = httpx.MockTransport(
        redirecting_server([], PAYLOAD[:CUT] + bytes([PAYLOAD[CUT] ^ 1]) + PAYLOAD[CUT + 1 :])
    )
    with Client("http://api.test", "sk_k_s", transport=transport) as c:
        with pytest.raises(ChecksumMismatchError):
            c.jobs.download_adapter("job_1", tmp_path / "a.zip")
    assert not (tmp_path / "a.zip").exists()
