"""The request context middleware: request id in, request id out, one context per request, and
one JSON access-log line per request that carries the request id, organization and user.

All middleware is synchronous: agentapi.asgi runs the whole chain on a worker thread in one
hand-off (an async chain would send every Django MiddlewareMixin hook through sync_to_async).
"""

import logging
import time

from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.http import JsonResponse

from agentapi import context

access_log = logging.getLogger("agentapi.access")
security_log = logging.getLogger("django.security.DisallowedHost")


def client_ip(request) -> str | None:
    # REMOTE_ADDR is what the socket saw; behind the documented reverse proxy, gunicorn/uvicorn's
    # --forwarded-allow-ips makes it the client's address, so we never parse X-Forwarded-For here.
    return request.META.get("REMOTE_ADDR") or None


class RequestContextMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = context.bind_request(
            request_id=request.headers.get("X-Request-ID"),
            ip=client_ip(request),
            user_agent=request.headers.get("User-Agent", ""),
        )
        request.request_id = context.current_request_id()
        started = time.perf_counter()
        try:
            response = self.get_response(request)
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
        finally:
            context.reset(token)


class APIGuardMiddleware:
    """Under /api/, what Django would answer with a page (in DEBUG, its technical page) is the
    JSON error shape instead: a Host not in ALLOWED_HOSTS (400) and a body declared larger than
    DATA_UPLOAD_MAX_MEMORY_SIZE (413, naming the limit), refused before anything reads it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith("/api/"):
            refusal = self._refusal(request)
            if refusal is not None:
                return refusal
        return self.get_response(request)

    def _refusal(self, request):
        from agentapi import errors

        try:
            request.get_host()
        except DisallowedHost as exc:
            security_log.error(str(exc))
            return JsonResponse(errors.error_body("bad_request", "The request could not be understood."), status=400)
        declared = request.META.get("CONTENT_LENGTH") or ""
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        if limit is not None and declared.isdigit() and int(declared) > limit:
            error = errors.request_too_large()
            return JsonResponse(errors.error_body(error.error_code, str(error.detail)), status=413)
        return None


class RateLimitHeadersMiddleware:
    """The RateLimit-Policy and RateLimit fields of an admitted request (tenants.ratelimits leaves
    them on the request; a refusal carries its own)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        for name, value in (getattr(request, "rate_limit_headers", None) or {}).items():
            if not response.has_header(name):
                response[name] = value
        return response
