"""The data plane's HTTP plumbing: what agents hit on every step, served natively on the event loop.

DESIGN.md, "two planes". The management plane (DRF, the admin, the user pages) runs synchronous
Django on the worker threads (agentapi.asgi). The data plane's routes (settings.DATA_PLANE_ROUTES:
tool calls, resource reads, prompt gets) are answered here instead, by async handlers on the ASGI
event loop that the MCP pool shares: no thread is held while an upstream server answers, and a
call costs no thread hand-off.

A route's handler is `async def handler(request: Request, **path_kwargs) -> dict` (the JSON body
of a 200, or an `Answer` with its own status) and raises DRF's APIException family for client errors, exactly as a DRF view does. This
module gives every route what the management plane's middleware gives a view, from the same shared
functions: the host check (ALLOWED_HOSTS), the HTTPS redirect, body limits (413), the request id
and context, one JSON access-log line, the request metrics, the security headers, and the error
shape (agentapi.errors.api_error_parts). An unexpected exception is logged and answered as the
management plane's 500.

Only PostgreSQL has the async database access the handlers need (agentapi.db.aio): on the embedded
SQLite profile, `enabled()` is false and the same routes are served by their DRF views.
"""

import json
import logging
import re
import time
from dataclasses import dataclass, field
from functools import cache
from urllib.parse import parse_qs

from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.utils.module_loading import import_string
from rest_framework import exceptions

from agentapi import context, errors, metrics, ratelimit
from agentapi.db import aio

logger = logging.getLogger(__name__)
access_log = logging.getLogger("agentapi.access")
security_log = logging.getLogger("django.security.DisallowedHost")

CHALLENGE = 'Bearer realm="agentapi"'


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    query: dict[str, list[str]]
    body: bytes
    _json: object = field(default=None, repr=False)

    def json(self):
        """The body parsed and checked (agentapi.parsers); an empty body is an empty object."""
        if self._json is None:
            from agentapi import parsers

            if not self.body.strip():
                self._json = {}
            else:
                content_type = self.headers.get("content-type", "").split(";")[0].strip().lower()
                if content_type != "application/json":
                    raise exceptions.UnsupportedMediaType(content_type or "none")
                self._json = parsers.loads(self.body)
        return self._json


class Answer(dict):
    """A handler's body answered with a status other than 200 (a 202, say), or headers of its own."""

    def __init__(self, status: int, body: dict, headers: dict[str, str] | None = None):
        super().__init__(body)
        self.status = status
        self.headers = headers or {}


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern
    handler: str  # dotted path, imported on first use
    name: str


@cache
def routes() -> tuple[Route, ...]:
    return tuple(
        Route(method, re.compile(pattern), handler, name)
        for method, pattern, handler, name in settings.DATA_PLANE_ROUTES
    )


@cache
def _handler(path: str):
    return import_string(path)


def enabled() -> bool:
    return settings.DATA_PLANE_ENABLED and aio.available()


@cache
def apps() -> tuple[Route, ...]:
    return tuple(Route("*", re.compile(pattern), app, name) for pattern, app, name in settings.DATA_PLANE_APPS)


def match_app(scope) -> tuple[Route, dict] | None:
    """The data-plane ASGI application for an HTTP request (on every profile), or None."""
    if scope["type"] != "http":
        return None
    for route in apps():
        found = route.pattern.match(scope["path"])
        if found:
            return route, found.groupdict()
    return None


def match(scope) -> tuple[Route, dict] | None:
    """The data-plane route for an HTTP request, or None (Django answers it)."""
    if scope["type"] != "http" or not scope["path"].startswith("/api/"):
        return None
    for route in routes():
        if route.method == scope["method"]:
            found = route.pattern.match(scope["path"])
            if found:
                return route, found.groupdict()
    return None


def _headers(scope) -> dict[str, str]:
    return {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}


def _secure(scope, headers: dict) -> bool:
    if scope.get("scheme") == "https":
        return True
    proxy = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy:
        name, value = proxy
        header = name.removeprefix("HTTP_").replace("_", "-").lower()
        return headers.get(header, "").split(",")[0].strip() == value
    return False


def _allowed_host(host: str) -> bool:
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    domain, _port = split_domain_port(host)
    return bool(domain) and validate_host(domain, allowed)


def _security_headers(secure: bool) -> list[tuple[bytes, bytes]]:
    # What SecurityMiddleware and XFrameOptionsMiddleware add to the management plane's answers.
    headers = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY")]
    if settings.SECURE_REFERRER_POLICY:
        headers.append((b"referrer-policy", str(settings.SECURE_REFERRER_POLICY).encode()))
    if settings.SECURE_CROSS_ORIGIN_OPENER_POLICY:
        headers.append((b"cross-origin-opener-policy", settings.SECURE_CROSS_ORIGIN_OPENER_POLICY.encode()))
    if secure and settings.SECURE_HSTS_SECONDS:
        value = f"max-age={settings.SECURE_HSTS_SECONDS}"
        if settings.SECURE_HSTS_INCLUDE_SUBDOMAINS:
            value += "; includeSubDomains"
        if settings.SECURE_HSTS_PRELOAD:
            value += "; preload"
        headers.append((b"strict-transport-security", value.encode()))
    return headers


async def read_body(receive, headers: dict) -> bytes | None:
    """The whole body, or None when it is larger than DATA_UPLOAD_MAX_MEMORY_SIZE."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    declared = headers.get("content-length", "")
    if limit is not None and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _send(send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _json_bytes(data) -> bytes:
    # As DRF's JSONRenderer writes it: compact, UTF-8.
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _bind(scope, headers: dict):
    """The request's context (request id, client): (token to reset it with, request id)."""
    client = scope.get("client")
    token = context.bind_request(
        request_id=headers.get("x-request-id"),
        ip=client[0] if client else None,
        user_agent=headers.get("user-agent", ""),
    )
    return token, context.current_request_id()


def _record(scope, route: Route, status: int, started: float) -> None:
    """The request's metrics and its one access-log line."""
    duration = time.perf_counter() - started
    metrics.HTTP_REQUESTS.labels(scope["method"], route.name, str(status)).inc()
    metrics.HTTP_LATENCY.labels(scope["method"], route.name).observe(duration)
    if settings.ACCESS_LOG:
        access_log.info(
            "request",
            extra={
                "method": scope["method"],
                "path": scope["path"],
                "status": status,
                "duration_ms": round(duration * 1000, 2),
            },
        )


async def serve(route: Route, kwargs: dict, scope, receive, send) -> None:
    """Answer one data-plane request (see the module's docstring for what it guarantees)."""
    started = time.perf_counter()
    headers = _headers(scope)
    token, request_id = _bind(scope, headers)
    secure = _secure(scope, headers)
    extra: list[tuple[bytes, bytes]] = []
    try:
        host = headers.get("host", "")
        if not _allowed_host(host):
            security_log.error("Invalid HTTP_HOST header: %r.", host[:200])
            status, data = 400, errors.error_body("bad_request", "The request could not be understood.")
        elif settings.SECURE_SSL_REDIRECT and not secure:
            status, data = 301, None
            query = scope.get("query_string", b"").decode("latin-1")
            location = f"https://{host}{scope['path']}" + (f"?{query}" if query else "")
            extra.append((b"location", location.encode("latin-1")))
        else:
            limited = ratelimit.admitted_headers.set({})
            try:
                status, data, more = await _answer(route, kwargs, scope, receive, headers)
                more = {**ratelimit.admitted_headers.get(), **more}
            finally:
                ratelimit.admitted_headers.reset(limited)
            extra += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in more.items()]
        body = b"" if data is None else _json_bytes(data)
        response_headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),
            *extra,
            *_security_headers(secure),
        ]
        await _send(send, status, body, response_headers)
        _record(scope, route, status, started)
    finally:
        context.reset(token)


async def serve_app(route: Route, kwargs: dict, scope, receive, send) -> None:
    """Hand one request to a data-plane ASGI application (settings.DATA_PLANE_APPS: the session
    MCP endpoint), `app(scope, receive, send, **kwargs)`, with what `serve` gives a route: the
    host check, the request id and context, the security headers, the access log and metrics, and
    the error shape for an APIException raised before the application answers."""
    started = time.perf_counter()
    headers = _headers(scope)
    token, request_id = _bind(scope, headers)
    secure = _secure(scope, headers)
    status = {"code": 500, "started": False}

    async def send_with_headers(message):
        if message["type"] == "http.response.start":
            status["code"], status["started"] = message["status"], True
            extra = [(b"x-request-id", request_id.encode()), *_security_headers(secure)]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    try:
        host = headers.get("host", "")
        try:
            if not _allowed_host(host):
                security_log.error("Invalid HTTP_HOST header: %r.", host[:200])
                raise exceptions.ParseError("The request could not be understood.")
            try:
                await _handler(route.handler)(scope, receive, send_with_headers, **kwargs)
            except Exception as exc:
                outage = None if isinstance(exc, exceptions.APIException) else errors.unavailable(exc)
                if outage is None or status["started"]:
                    raise
                logger.warning("a dependency is unavailable: %s", type(exc).__name__, extra={"path": scope["path"]})
                raise outage from exc
        except exceptions.APIException as exc:
            if status["started"]:
                raise
            code, data, more = errors.api_error_parts(await ratelimit.after_failure_async(exc), challenge=CHALLENGE)
            extra = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in more.items()]
            body = _json_bytes(data)
            await send_with_headers(
                {
                    "type": "http.response.start",
                    "status": code,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        *extra,
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
        except Exception:
            logger.exception("Internal error on the data plane", extra={"path": scope["path"]})
            if not status["started"]:
                body = _json_bytes(
                    errors.error_body("internal_error", "Something went wrong on our side; it has been logged.")
                )
                await send_with_headers(
                    {"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"application/json")]}
                )
                await send({"type": "http.response.body", "body": body})
        _record(scope, route, status["code"], started)
    finally:
        context.reset(token)


async def _answer(route: Route, kwargs: dict, scope, receive, headers: dict) -> tuple[int, dict, dict]:
    try:
        body = await read_body(receive, headers)
        if body is None:
            raise errors.request_too_large()
        request = Request(
            method=scope["method"],
            path=scope["path"],
            headers=headers,
            query=parse_qs(scope.get("query_string", b"").decode("latin-1")),
            body=body,
        )
        answer = await _handler(route.handler)(request, **kwargs)
        return getattr(answer, "status", 200), answer, getattr(answer, "headers", {})
    except exceptions.APIException as exc:
        return errors.api_error_parts(await ratelimit.after_failure_async(exc), challenge=CHALLENGE)
    except Exception as exc:
        if (outage := errors.unavailable(exc)) is not None:
            logger.warning("a dependency is unavailable: %s", type(exc).__name__, extra={"path": scope["path"]})
            return errors.api_error_parts(outage, challenge=CHALLENGE)
        logger.exception("Internal error on the data plane", extra={"path": scope["path"]})
        return 500, errors.error_body("internal_error", "Something went wrong on our side; it has been logged."), {}
