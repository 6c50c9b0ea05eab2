"""``GET /``: the playground page (plain HTML, CSS and JS in ``service/playground/``, no build step)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["STATIC", "router", "static_files"]

STATIC = Path(__file__).resolve().parent.parent / "playground"

router = APIRouter(include_in_schema=False)


@router.get("/")
async def playground() -> FileResponse:
    """Try a DSL, or your own grammar, in the browser."""
    return FileResponse(STATIC / "index.html", media_type="text/html")


def static_files() -> StaticFiles:
    return StaticFiles(directory=STATIC)
