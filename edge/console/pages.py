"""The console's page and assets at /ui, read once at mount and served from memory.

Every answer carries a Content-Security-Policy that allows scripts, styles and connections to this
origin only, no inline script or style, images from this origin or blob: (a tool's image results),
no framing, and Trusted Types with no policy (a string given to an HTML or script sink throws).
Tool descriptions and outputs are untrusted: the scripts render them as text (textContent), never
as HTML; the policy is the second wall, not the first. The page is one HTML
document; its views are chosen by the URL's fragment (#/tools, #/python ...), so /ui/ is the only
HTML route. Everything under /ui goes through the edge's middleware like any route (the Origin/Host
guard, per-client bounds).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

from aiohttp import web

from services.common.errors import NotFound

STATIC = Path(__file__).parent / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "
    # Trusted Types with no policy: a string given to an HTML or script sink (innerHTML, a script's
    # src, eval) throws in the browser, vendored code included; the console has none to give.
    "require-trusted-types-for 'script'; trusted-types 'none'"
)
HEADERS: Mapping[str, str] = MappingProxyType(
    {
        "Content-Security-Policy": CSP,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-cache",
    }
)
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
ASSETS = web.AppKey("console_assets", dict[str, tuple[bytes, str]])


def load(root: Path = STATIC) -> dict[str, tuple[bytes, str]]:
    """Every servable file under `root` by its path relative to it: (bytes, content type)."""
    out: dict[str, tuple[bytes, str]] = {}
    for path in sorted(root.rglob("*")):
        kind = _TYPES.get(path.suffix)
        if path.is_file() and kind is not None:
            out[path.relative_to(root).as_posix()] = (path.read_bytes(), kind)
    return out


def _answer(body: bytes, content_type: str) -> web.Response:
    charset = "utf-8" if content_type.startswith("text/") else None
    return web.Response(body=body, content_type=content_type, charset=charset, headers=HEADERS)


async def ui_root(request: web.Request) -> web.Response:
    """/ui -> /ui/ (the page's relative module paths resolve against the directory)."""
    return web.Response(status=308, headers={**HEADERS, "Location": "/ui/"})


async def ui_page(request: web.Request) -> web.Response:
    body, kind = request.app[ASSETS]["index.html"]
    return _answer(body, kind)


async def ui_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    found = request.app[ASSETS].get(name)
    if found is None:
        raise NotFound(f"no console asset {name[:200]!r}", reason="ASSET_NOT_FOUND")
    return _answer(*found)


def mount(app: web.Application) -> None:
    """Serve the console's files (app[ASSETS]) at /ui/."""
    app[ASSETS] = load()
    app.router.add_get("/ui", ui_root)
    app.router.add_get("/ui/", ui_page)
    app.router.add_get("/ui/{name:.+}", ui_asset)
