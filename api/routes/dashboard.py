"""The web dashboard: GET / is its page, GET /ui/{file} its scripts, styles and vendored
uPlot, all shipped in the package (api/static/); nothing is loaded from another host.

The files are public (they hold no job data): a browser cannot send a bearer token when it
loads a page or a <script>, so the page asks for the token and sends it on every API call it
makes. Only files present at import are served, from a fixed table: no path from the request
reaches the file system. Every answer carries a Content-Security-Policy that allows scripts,
styles and connections to this origin only and no inline script, so job-provided text (names,
log lines) cannot become code even if the page had a bug that inserted it as markup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from agent.core.errors import NotFound

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).resolve().parent.parent / "static"
ASSET_PREFIX = "/ui/"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate each load: an upgraded service must not run an old script against a new API.
    "Cache-Control": "no-cache",
}
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".LICENSE": "text/plain; charset=utf-8",
}


def _assets(root: Path) -> dict[str, Path]:
    """Every servable file under `root` by its URL path ("vendor/uPlot.min.css")."""
    if not root.is_dir():
        return {}
    return {
        path.relative_to(root).as_posix(): path
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.suffix in CONTENT_TYPES
    }


ASSETS = _assets(STATIC)


def _file(name: str) -> FileResponse:
    path = ASSETS.get(name)
    if path is None:
        raise NotFound(f"no dashboard file {name[:100]!r}")
    return FileResponse(path, media_type=CONTENT_TYPES[path.suffix], headers=SECURITY_HEADERS)


@router.api_route("/", methods=["GET", "HEAD"])
def dashboard() -> FileResponse:
    """The dashboard page."""
    return _file("index.html")


@router.api_route(ASSET_PREFIX + "{name:path}", methods=["GET", "HEAD"])
def asset(name: Annotated[str, PathParam(max_length=200)]) -> FileResponse:
    """One of the dashboard's own files."""
    return _file(name)
