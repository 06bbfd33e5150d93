"""Multipart uploads streamed straight to a temp folder inside the data dir.

The size limit is enforced while the bytes arrive and the sha256 is computed on the fly.
Validation runs the library's own checks; on any rejection the temp folder is removed, so
nothing is left anywhere.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from app.problems import ApiError, from_library
from jobstore.settings import Settings
from sanitizer.errors import SanitizerError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
MAX_FIELD = 64 * 1024
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str) -> str:
    base = _SAFE.sub("_", os.path.basename(name.replace("\\", "/"))).strip("._") or "upload"
    return base[:200]


class _TooLarge(Exception):
    pass


@dataclass
class Upload:
    tmp_dir: Path
    fields: dict[str, str] = field(default_factory=dict)
    filename: str | None = None
    path: Path | None = None
    size: int = 0
    sha256: str = ""

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


def too_large(limit: int, purpose: str | None) -> ApiError:
    what = f"{purpose} uploads" if purpose else "uploads"
    return ApiError(
        413,
        "file_too_large",
        f"the upload exceeds the {limit} byte limit for {what}",
        hint="upload a smaller file, or raise SANITIZER_MAX_ADAPTER_BYTES / "
        "SANITIZER_MAX_DATASET_BYTES on the server",
        limit=limit,
    )


def limit_for(purpose: str | None, settings: Settings) -> int:
    if purpose == "adapter":
        return settings.max_adapter_bytes
    if purpose in ("dataset", "unlabeled"):
        return settings.max_dataset_bytes
    return max(settings.max_adapter_bytes, settings.max_dataset_bytes)


async def receive(request: Request, settings: Settings) -> Upload:
    """Parse the multipart body: form fields in memory, the one file part to disk."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise ApiError(
            415,
            "unsupported_media_type",
            "upload with Content-Type multipart/form-data",
            hint="e.g. curl -F purpose=dataset -F file=@clean.csv",
        )
    declared = request.headers.get("content-length")
    hard_limit = limit_for(None, settings)
    if declared and declared.isdigit() and int(declared) > hard_limit + MAX_FIELD:
        raise too_large(hard_limit, None)

    tmp_root = settings.data_dir / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    up = Upload(Path(tempfile.mkdtemp(prefix="upload-", dir=tmp_root)))
    state: dict[str, Any] = {"headers": {}, "name": None, "fh": None, "buf": None}
    hdr: dict[str, bytes] = {"field": b"", "value": b""}
    digest = hashlib.sha256()

    def on_part_begin() -> None:
        state.update(headers={}, name=None, fh=None, buf=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        hdr["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        hdr["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][hdr["field"].decode("latin-1").lower()] = hdr["value"]
        hdr["field"], hdr["value"] = b"", b""

    def on_headers_finished() -> None:
        _, disp = parse_options_header(state["headers"].get("content-disposition", b""))
        state["name"] = disp.get(b"name", b"").decode("utf-8", "replace")
        filename = disp.get(b"filename")
        if filename is not None:
            if up.path is not None:
                raise ApiError(
                    422,
                    "too_many_files",
                    "the upload has more than one file part",
                    hint="send exactly one file part, named 'file'; upload each file separately",
                )
            up.filename = filename.decode("utf-8", "replace")
            up.path = up.tmp_dir / safe_filename(up.filename)
            state["fh"] = open(up.path, "wb")  # noqa: SIM115 - closed in on_part_end/finally

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if state["fh"] is not None:
            up.size += len(chunk)
            if up.size > limit_for(up.fields.get("purpose"), settings):
                raise _TooLarge()
            digest.update(chunk)
            state["fh"].write(chunk)
        else:
            state["buf"] += chunk
            if len(state["buf"]) > MAX_FIELD:
                raise ApiError(
                    422,
                    "field_too_large",
                    f"form field '{state['name']}' is longer than {MAX_FIELD} bytes",
                    hint="form fields carry short values (purpose, task, column names); "
                    "send the data itself as the 'file' part",
                )

    def on_part_end() -> None:
        if state["fh"] is not None:
            state["fh"].flush()
            os.fsync(state["fh"].fileno())
            state["fh"].close()
            state["fh"] = None
        else:
            up.fields[state["name"]] = bytes(state["buf"]).decode("utf-8", "replace")

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
    except _TooLarge:
        up.cleanup()
        raise too_large(
            limit_for(up.fields.get("purpose"), settings), up.fields.get("purpose")
        ) from None
    except ApiError:
        up.cleanup()
        raise
    except Exception as exc:
        up.cleanup()
        raise ApiError(
            400,
            "malformed_multipart",
            f"the multipart body is malformed: {exc}",
            hint="send a multipart/form-data body with the boundary named in Content-Type, "
            "e.g. curl -F purpose=dataset -F file=@clean.csv",
        ) from exc
    finally:
        if state["fh"] is not None:
            state["fh"].close()
    up.sha256 = digest.hexdigest()
    return up


def validate_adapter(path: Path, work: Path, settings: Settings) -> dict[str, Any]:
    """Unpack into ``work`` with the library's safe extractor and check the PEFT folder."""
    from sanitizer.archives import extract_archive
    from sanitizer.safety import check_adapter_dir

    if not path.name.lower().endswith(ARCHIVE_SUFFIXES):
        raise ApiError(
            422,
            "invalid_archive",
            f"'{path.name}' is not an archive; an adapter is uploaded as a .zip or .tar.gz "
            "of the PEFT folder",
            hint="zip the folder written by save_pretrained (adapter_config.json + "
            "adapter_model.safetensors) and upload the .zip",
        )
    try:
        folder = extract_archive(
            path, work, max_bytes=settings.max_extracted_bytes, max_files=settings.max_archive_files
        )
        info = check_adapter_dir(folder)
    except SanitizerError as exc:
        raise from_library(exc, field="file") from exc
    return {
        "peft_type": info.peft_type,
        "base_model": info.base_model,
        "r": info.r,
        "target_modules": info.target_modules,
        "task_type": info.task_type,
    }


Task = Literal["classification", "generation"]


def validate_dataset(
    path: Path, task: Task | None, text_column: str, label_column: str
) -> dict[str, Any]:
    """Run the library's loader; with no ``task`` given, classification then generation."""
    from sanitizer.data import load_dataset

    tasks: list[Task] = [task] if task else ["classification", "generation"]
    first: SanitizerError | None = None
    for t in tasks:
        try:
            ds = load_dataset(path, task=t, text_column=text_column, label_column=label_column)
        except SanitizerError as exc:
            first = first or exc
            continue
        return {
            "task": ds.task,
            "rows": len(ds),
            "label_names": ds.label_names,
            "text_column": text_column,
            "label_column": label_column,
        }
    assert first is not None
    raise from_library(first, field="file")


def validate_texts(path: Path, text_column: str, field: str = "file") -> dict[str, Any]:
    """An unlabeled file (purpose=unlabeled): the library's reader of a text column."""
    from sanitizer.data import load_texts

    try:
        texts, _ = load_texts(path, text_column)
    except SanitizerError as exc:
        raise from_library(exc, field=field) from exc
    return {"rows": len(texts), "text_column": text_column}
