"""The admin board at /admin/queues (issue 4). Until it lands, the path says so."""

from __future__ import annotations

from aiohttp import web


async def _not_built(request: web.Request) -> web.Response:
    return web.json_response({"ok": False, "error": "the admin board is not built yet"}, status=501)


def setup(app: web.Application) -> None:
    app.router.add_get("/admin/queues", _not_built)
