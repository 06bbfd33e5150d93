"""Files: adapters and datasets, validated on upload."""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from sqlalchemy import select

from app import uploads
from app.deps import ProjectDep, SessionDep, SettingsDep, StoreDep
from app.pagination import keyset_page
from app.problems import ApiError, not_found
from app.schemas import FilePublic, FilesPublic
from jobstore import files as file_store
from jobstore.models import File, new_id

router = APIRouter(prefix="/v1/files", tags=["files"])

UPLOAD_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["purpose", "file"],
                    "properties": {
                        "purpose": {
                            "type": "string",
                            "enum": ["adapter", "dataset", "unlabeled"],
                            "description": "unlabeled: in-domain texts without labels (a text "
                            "column) for a classification rebuild's unlabeled_dataset_file",
                        },
                        "file": {"type": "string", "format": "binary"},
                        "task": {"type": "string", "enum": ["classification", "generation"]},
                        "text_column": {"type": "string", "default": "text"},
                        "label_column": {"type": "string", "default": "label"},
                    },
                }
            }
        },
    }
}


def to_public(f: File) -> FilePublic:
    return FilePublic(
        id=f.id,
        purpose=f.purpose,  # type: ignore[arg-type]
        filename=f.filename,
        bytes=f.bytes,
        sha256=f.sha256,
        created_at=f.created_at,
        details=f.info or {},
    )


def get_owned(s: SessionDep, project_id: str, file_id: str) -> File:
    f = s.get(File, file_id)
    if f is None or f.project_id != project_id:
        raise not_found("file", file_id)
    return f


def _same_upload(
    s: SessionDep, project_id: str, purpose: str, sha256: str, fields: dict[str, str]
) -> File | None:
    """A file of this project with these bytes, this purpose and, for a dataset, validated
    with the same task and columns (OpenAI-style reuse: a pipeline that uploads its inputs
    on every run gets the same ids, so its Idempotency-Key replays)."""
    for f in s.scalars(select(File).where(File.project_id == project_id, File.sha256 == sha256)):
        info = f.info or {}
        if f.purpose != purpose:
            continue
        if purpose in ("dataset", "unlabeled") and info.get("text_column") != (
            fields.get("text_column") or "text"
        ):
            continue
        if purpose == "dataset" and (
            info.get("label_column") != (fields.get("label_column") or "label")
            or (fields.get("task") and info.get("task") != fields.get("task"))
        ):
            continue
        return f
    return None


@router.post(
    "",
    status_code=201,
    response_model=FilePublic,
    openapi_extra=UPLOAD_DOC,
    responses={
        200: {
            "model": FilePublic,
            "description": "these bytes were uploaded before: "
            "the existing file (header X-File-Reused: true)",
        }
    },
)
async def upload_file(
    request: Request, project: ProjectDep, s: SessionDep, settings: SettingsDep, store: StoreDep
) -> Any:
    """Upload an adapter archive or a dataset (multipart: purpose, file); validated before it is kept."""
    up = await uploads.receive(request, settings)
    try:
        purpose = up.fields.get("purpose")
        if purpose not in ("adapter", "dataset", "unlabeled"):
            raise ApiError(
                422,
                "invalid_purpose",
                f"purpose must be 'adapter', 'dataset' or 'unlabeled', got {purpose!r}",
                errors=[{"loc": ["body", "purpose"], "message": "adapter | dataset | unlabeled"}],
                hint="add the form field purpose=adapter, purpose=dataset or purpose=unlabeled "
                "(texts without labels)",
            )
        if up.path is None or up.filename is None:
            raise ApiError(
                422,
                "missing_file",
                "the upload has no file part",
                errors=[{"loc": ["body", "file"], "message": "field required"}],
                hint="send the file as the multipart field 'file'",
            )
        # the streaming check saw the purpose only if its field came before the file part
        if up.size > uploads.limit_for(purpose, settings):
            raise uploads.too_large(uploads.limit_for(purpose, settings), purpose)
        if up.size == 0:
            raise ApiError(
                422, "empty_file", f"'{up.filename}' is empty", hint="upload a non-empty file"
            )
        reused = _same_upload(s, project.id, purpose, up.sha256, up.fields)
        if reused is not None:  # identical bytes checked the same way: the file it already is
            return JSONResponse(
                to_public(reused).model_dump(mode="json"), 200, headers={"X-File-Reused": "true"}
            )
        if purpose == "adapter":
            info = await run_in_threadpool(
                uploads.validate_adapter, up.path, up.tmp_dir / "extracted", settings
            )
        elif purpose == "unlabeled":
            info = await run_in_threadpool(
                uploads.validate_texts, up.path, up.fields.get("text_column") or "text"
            )
        else:
            task = up.fields.get("task") or None
            if task not in (None, "classification", "generation"):
                raise ApiError(
                    422,
                    "invalid_task",
                    f"task must be classification or generation, got {task!r}",
                    errors=[{"loc": ["body", "task"], "message": "classification | generation"}],
                    hint="send task=classification or task=generation, or leave it out to detect it",
                )
            task = cast(uploads.Task | None, task)
            info = await run_in_threadpool(
                uploads.validate_dataset,
                up.path,
                task,
                up.fields.get("text_column") or "text",
                up.fields.get("label_column") or "label",
            )
        file_id = new_id("file")
        key = f"files/{file_id}/{up.path.name}"
        await run_in_threadpool(store.put_file, key, up.path, move=True)
        record = File(
            id=file_id,
            project_id=project.id,
            purpose=purpose,
            filename=up.filename,
            bytes=up.size,
            sha256=up.sha256,
            storage_key=key,
            info=info,
        )
        s.add(record)
        try:
            s.commit()
        except Exception:
            store.delete_prefix(f"files/{file_id}")
            raise
        return to_public(record)
    finally:
        up.cleanup()


@router.get("", response_model=FilesPublic)
def list_files(
    project: ProjectDep,
    s: SessionDep,
    purpose: Literal["adapter", "dataset", "unlabeled"] | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> FilesPublic:
    """List your files, newest first (cursor: after=<last_id>)."""
    q = select(File).where(File.project_id == project.id)
    if purpose:
        q = q.where(File.purpose == purpose)
    page, more = keyset_page(s, q, File.id, after or None, limit, newest_first=True)
    return FilesPublic(
        data=[to_public(f) for f in page], has_more=more, last_id=page[-1].id if page else None
    )


@router.get("/{file_id}", response_model=FilePublic)
def get_file(file_id: str, project: ProjectDep, s: SessionDep) -> FilePublic:
    """Get one file's metadata."""
    return to_public(get_owned(s, project.id, file_id))


@router.delete("/{file_id}", status_code=204)
def delete_file(file_id: str, project: ProjectDep, s: SessionDep, store: StoreDep) -> Response:
    """Delete a file that no active job uses."""
    f = get_owned(s, project.id, file_id)
    busy = file_store.active_user(s, f.id)
    if busy:
        raise ApiError(
            409,
            "file_in_use",
            f"file '{f.id}' is used by active job '{busy}'",
            hint="wait for the job to finish or cancel it, then delete the file",
        )
    file_store.delete_file(s, store, f)
    return Response(status_code=204)
