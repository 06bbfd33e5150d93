"""What a job can name: the base models this service has and the sanitization methods.
Clients check a job against these before they upload anything."""

from __future__ import annotations

from fastapi import APIRouter

from app.deps import ProjectDep, StoreDep
from app.schemas import MethodPublic, MethodsPublic, ModelPublic, ModelsPublic
from jobstore.model_cache import published_models
from sanitizer.defenses import registry
from sanitizer.hub import list_models

router = APIRouter(prefix="/v1", tags=["catalog"])


@router.get("/models", response_model=ModelsPublic)
def list_service_models(project: ProjectDep, store: StoreDep) -> ModelsPublic:
    """Base models a job may name: installed on the service, or published to its store."""
    data = [ModelPublic(id=m, source="installed") for m in list_models()]
    for model_id, revision in published_models(store):
        data.append(ModelPublic(id=model_id, revision=revision, source="published"))
    return ModelsPublic(data=data)


@router.get("/methods", response_model=MethodsPublic)
def list_methods(project: ProjectDep) -> MethodsPublic:
    """Sanitization methods (``auto`` picks one per input kind) and their hyperparameters."""
    data = [
        MethodPublic(
            id=spec.name,
            summary=spec.summary,
            needs_trusted_base=spec.needs_trusted_base,
            hyperparameters=spec.config.model_json_schema(),
        )
        for spec in registry.REGISTRY.values()
    ]
    data.append(
        MethodPublic(
            id=registry.AUTO,
            summary="rebuild when the job uploads an adapter (a trusted base), else crow",
            needs_trusted_base=False,
            hyperparameters={},
        )
    )
    return MethodsPublic(data=data)
