"""The request context middleware: request id in, request id out, one context per request, and
one JSON access-log line per request that carries the request id, organization and user.

Middleware here is both sync- and async-capable. Under ASGI a chain of async-capable middleware
lets Django cross into a worker thread once, for the view; one sync-only middleware would split
the chain and add two more thread hand-offs to every request.
"""

import logging
import time

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings

from agentapi import context

access_log = logging.getLogger("agentapi.access")


class HybridMiddleware:
    """Base for middleware with a sync path (`call`) and an async path (`acall`)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response):
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request):
        if self.is_async:
            return self.acall(request)
        return self.call(request)


def client_ip(request) -> str | None:
    # REMOTE_ADDR is what the socket saw; behind the documented reverse proxy, gunicorn/uvicorn's
    # --forwarded-allow-ips makes it the client's address, so we never parse X-Forwarded-For here.
    return request.META.get("REMOTE_ADDR") or None


class RequestContextMiddleware(HybridMiddleware):
    def _begin(self, request):
        token = context.bind_request(
            request_id=request.headers.get("X-Request-ID"),
            ip=client_ip(request),
            user_agent=request.headers.get("User-Agent", ""),
        )
        request.request_id = context.current_request_id()
        return token, time.perf_counter()

    def _end(self, request, response, started):
        response["X-Request-ID"] = request.request_id
        if settings.ACCESS_LOG:
            access_log.info(
                "request",
                extra={
                    "method": request.method,
                    "path": request.path,
                    "status": response.status_code,
                    "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )
        return response

    def call(self, request):
        token, started = self._begin(request)
        try:
            return self._end(request, self.get_response(request), started)
        finally:
            context.reset(token)

    async def acall(self, request):
        token, started = self._begin(request)
        try:
            return self._end(request, await self.get_response(request), started)
        finally:
            context.reset(token)
