"""The HTTP edge's shared parts: an access log that carries nothing a request carries, and the
worker's admin server (/health, /ready, /metrics apart from the window API, WAGATE_ADMIN_PORT)."""

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


def admin_app(ready: Callable[[], tuple[int, bytes]], metrics_page: Callable[[], bytes]) -> web.Application:
    """/health (the event loop answers), /ready (status and its checks, JSON) and /metrics."""

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def ready_(request: web.Request) -> web.Response:
        status, body = ready()
        return web.Response(body=body, status=status, content_type="application/json")

    async def metrics_(request: web.Request) -> web.Response:
        return web.Response(body=metrics_page(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready_)
    app.router.add_get("/metrics", metrics_)
    return app


class AdminServer:
    """The admin app on its own port, started with the worker (before recovery, which may take minutes:
    the kubelet's probes must be answered meanwhile) and stopped with it."""

    def __init__(self, app: web.Application, host: str, port: int) -> None:
        self.runner = web.AppRunner(app, access_log_class=AccessLog)
        self.host, self.port = host, port
        self.started = False

    async def start(self) -> None:
        if not self.started:
            await self.runner.setup()
            await web.TCPSite(self.runner, self.host, self.port).start()
            self.started = True

    async def stop(self) -> None:
        if self.started:
            self.started = False
            await self.runner.cleanup()
