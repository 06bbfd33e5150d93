"""A local stand-in for the Hugging Face Hub's write API: the endpoints huggingface_hub's
``create_repo`` and ``upload_folder`` call for small files (create, validate-yaml,
preupload, commit with base64 file contents), recording what arrives. Never the network."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


@dataclass
class HubState:
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {private, files}
    auth: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)


def create_hub(state: HubState) -> Starlette:
    def seen(request: Request) -> None:
        state.calls.append(f"{request.method} {request.url.path}")
        state.auth.append(request.headers.get("authorization", ""))

    async def create(request: Request) -> JSONResponse:
        seen(request)
        body = await request.json()
        repo = (
            f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        )
        url = f"{request.base_url}{repo}"
        if repo in state.repos:
            return JSONResponse({"error": "You already created this model repo", "url": url}, 409)
        private = body.get("private", body.get("visibility") == "private")
        state.repos[repo] = {"private": private, "files": {}}
        return JSONResponse({"url": url, "name": repo})

    async def validate_yaml(request: Request) -> JSONResponse:
        seen(request)
        content = (await request.json())["content"]
        if not content.startswith("---"):
            return JSONResponse({"errors": [{"message": "no YAML front matter"}]}, 400)
        return JSONResponse({"errors": [], "warnings": []})

    async def preupload(request: Request) -> JSONResponse:
        seen(request)
        files = (await request.json())["files"]
        return JSONResponse(
            {
                "files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                    for f in files
                ]
            }  # fmt: skip
        )

    async def commit(request: Request) -> JSONResponse:
        seen(request)
        repo = f"{request.path_params['ns']}/{request.path_params['name']}"
        if repo not in state.repos:
            return JSONResponse({"error": "Repository not found"}, 404)
        for line in (await request.body()).splitlines():
            item = json.loads(line)
            if item["key"] == "file":
                value = item["value"]
                state.repos[repo]["files"][value["path"]] = base64.b64decode(value["content"])
        oid = hashlib.sha1(repr(sorted(state.repos[repo]["files"])).encode()).hexdigest()
        return JSONResponse(
            {"commitUrl": f"{request.base_url}{repo}/commit/{oid}", "commitOid": oid}
        )

    return Starlette(
        routes=[
            Route("/api/repos/create", create, methods=["POST"]),
            Route("/api/validate-yaml", validate_yaml, methods=["POST"]),
            Route("/api/models/{ns}/{name}/preupload/{rev}", preupload, methods=["POST"]),
            Route("/api/models/{ns}/{name}/commit/{rev}", commit, methods=["POST"]),
        ]
    )
