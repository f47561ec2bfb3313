"""The web playground: a static page (HTML, JS, CSS in ``tts_server/playground/``) to try the server in a browser.

=============================  ===============================================================
``GET /``                      307 to ``playground/`` (the root has no other use)
``GET /playground``            307 to ``playground/`` (the page's relative URLs need the slash)
``GET /playground/``           the page (``index.html``)
``GET /playground/{name}``     one of the page's files; anything else is a 404
=============================  ===============================================================

The files are read once, when the routes are built, into a fixed table: a request can only name a
file of that table, so no path (``..``, an encoded slash, a symlink) ever reaches the file system.
They are served with ``Cache-Control: no-cache`` and a strong ``ETag`` (a browser revalidates and
gets a 304 while the server's version is unchanged; the names carry no version, so a longer cache
would keep an old script after an upgrade), ``X-Content-Type-Options: nosniff`` and a
``Content-Security-Policy`` that lets the page load and call nothing but this server.

The page itself is open (``tts_server.http.auth``: the API key is typed *into* it); every API call
it makes sends that key. These routes are not part of the API and stay out of ``/openapi.json``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from tts_server.errors import ApiError

__all__ = ["PLAYGROUND_DIR", "StaticFile", "load_files", "playground_routes"]

PLAYGROUND_DIR = Path(__file__).resolve().parents[1] / "playground"

_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# Same origin only: no CDN, no inline script; blob: for the download link and the played file.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "media-src 'self' blob:; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class StaticFile:
    """One file of the page, held in memory."""

    body: bytes
    content_type: str
    etag: str


def load_files(directory: Path = PLAYGROUND_DIR) -> dict[str, StaticFile]:
    """The servable files of ``directory`` by name: regular files with a known type, not in subfolders.

    Raises:
        FileNotFoundError: ``directory`` has no ``index.html`` (a broken install should fail at start, not at use).
    """
    files: dict[str, StaticFile] = {}
    for path in sorted(directory.iterdir()):
        content_type = _CONTENT_TYPES.get(path.suffix)
        if content_type is None or not path.is_file() or path.is_symlink():
            continue
        body = path.read_bytes()
        files[path.name] = StaticFile(body, content_type, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')
    if "index.html" not in files:
        raise FileNotFoundError(f"the playground's index.html is missing from {directory}")
    return files


def _serve(request: Request, file: StaticFile) -> Response:
    headers = {
        "ETag": file.etag,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": _CSP,
        "Referrer-Policy": "no-referrer",
    }
    if file.etag in (tag.strip() for tag in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers=headers)
    return Response(file.body, headers={**headers, "Content-Type": file.content_type})


def playground_routes(directory: Path = PLAYGROUND_DIR) -> list[Route]:
    """The routes of this module, serving the files of ``directory`` (read now)."""
    files = load_files(directory)

    async def to_page(request: Request) -> Response:
        # Relative, so the redirect also holds behind a proxy that serves the app under a path prefix.
        return RedirectResponse("playground/", status_code=307)

    async def index(request: Request) -> Response:
        return _serve(request, files["index.html"])

    async def static_file(request: Request) -> Response:
        name = request.path_params["name"]
        file = files.get(name)
        if file is None:
            raise ApiError(404, "no such playground file", type="not_found")
        return _serve(request, file)

    return [
        Route("/", to_page, methods=["GET"], include_in_schema=False),
        Route("/playground", to_page, methods=["GET"], include_in_schema=False),
        Route("/playground/", index, methods=["GET"], include_in_schema=False),
        Route("/playground/{name}", static_file, methods=["GET"], include_in_schema=False),
    ]
