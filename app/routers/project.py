"""The calling key's project (its webhook signing secret)."""

from fastapi import APIRouter

from app.deps import ProjectDep
from app.schemas import ProjectPublic

router = APIRouter(prefix="/v1/project", tags=["project"])


@router.get("", response_model=ProjectPublic)
def get_project(project: ProjectDep) -> ProjectPublic:
    """The project of the API key, with the secret that verifies its webhooks."""
    return ProjectPublic(id=project.id, name=project.name, webhook_secret=project.webhook_secret)
