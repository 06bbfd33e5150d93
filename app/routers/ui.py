"""A small read-only page to watch jobs (GET /ui): plain HTML and JavaScript from the package,
no CDN. The page asks for the API key once and calls the same REST API with it."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

router = APIRouter(tags=["ui"])
PAGE = Path(__file__).resolve().parents[1] / "static" / "ui.html"


@lru_cache
def _page() -> str:
    return PAGE.read_text(encoding="utf-8")


@router.get("/ui", response_class=HTMLResponse, include_in_schema=False)
def ui() -> HTMLResponse:
    return HTMLResponse(
        _page(),
        headers={
            # the page talks to this origin only; no inline content from elsewhere
            "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
            "style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
            "frame-ancestors 'none'",
            "Cache-Control": "no-store",
        },
    )
