"""The HTTP edge's shared parts: an access log that carries nothing a request carries, the admin app
(/health, /metrics and, for a worker, /ready: served apart from the public port) and a site that
serves an app on one address until stopped (the worker's WAGATE_ADMIN_PORT, both of the receiver's)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from prometheus_client import CONTENT_TYPE_LATEST


class AccessLog(AbstractAccessLogger):
    """One line per request, without anything a request carries: the route's pattern (never the path
    or query string, which hold the verify token, phone numbers and BSUIDs), status, size, duration."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        match_info = getattr(request, "match_info", None)
        route = getattr(match_info, "route", None)
        resource = getattr(route, "resource", None)
        pattern = resource.canonical if resource is not None else "(no route)"
        self.logger.info(
            "%s %s %d %dB %.1fms", request.method, pattern, response.status, response.body_length, time * 1000
        )


def admin_app(
    metrics_page: Callable[[], bytes], ready: Callable[[], tuple[int, bytes]] | None = None
) -> web.Application:
    """/health (the event loop answers), /metrics and, given ``ready``, /ready (status and its checks,
    JSON)."""

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def metrics_(request: web.Request) -> web.Response:
        return web.Response(body=metrics_page(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics_)
    if ready is not None:
        checks = ready

        async def ready_(request: web.Request) -> web.Response:
            status, body = checks()
            return web.Response(body=body, status=status, content_type="application/json")

        app.router.add_get("/ready", ready_)
    return app


class Site:
    """An app served on one address with the route-only access log, from ``start`` to ``stop``."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.runner = web.AppRunner(app, access_log_class=AccessLog)
        self.host, self.port = host, port
        self.started = False

    async def start(self) -> None:
        if not self.started:
            await self.runner.setup()
            self.started = True  # (set up: cleaned up by stop even if binding fails)
            await web.TCPSite(self.runner, self.host, self.port).start()

    async def stop(self) -> None:
        if self.started:
            self.started = False
            await self.runner.cleanup()
