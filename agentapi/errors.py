"""One error shape for every 4xx under /api/: {"error": {"code", "message", "details"}}.

DRF's own errors (validation, authentication, not found, throttling...) are translated here;
Django-level errors under /api/ (unknown URL, CSRF, bad host, a crash) by the handlers below.
Codes are stable: clients may branch on them.
"""

import logging
import sys

from django.conf import settings
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import connections
from django.http import Http404, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.views import exception_handler as drf_exception_handler

from agentapi import ratelimit

logger = logging.getLogger(__name__)

_CODES = {
    exceptions.ParseError: "malformed_request",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "rate_limited",
    exceptions.ValidationError: "invalid",
}


class APIError(exceptions.APIException):
    """A domain error with its own stable code: raise APIError("conflict", "...", status=409)."""

    def __init__(self, code: str, message: str, *, status: int = 400, details=None, retry_after: int | None = None):
        super().__init__(detail=message, code=code)
        self.status_code = status
        self.error_code = code
        self.details = details or {}
        self.wait = retry_after  # DRF's handler turns `wait` into a Retry-After header


# How long a client is told to wait when a dependency is down: PostgreSQL restarting or failing
# over, Redis (the broker, the cache) restarting. Short: the platform recovers by itself.
UNAVAILABLE_RETRY_AFTER = 5


def unavailable(exc: BaseException) -> "APIError | None":
    """503 with Retry-After when `exc` says a dependency is unreachable (PostgreSQL, Redis, the
    broker) rather than that the request or the code is wrong; None otherwise. Both planes and
    Django's own 500 handler ask this, so an outage is never answered as our bug. The message
    names no host: the error's own text (addresses, ports) stays in the log."""
    import psycopg
    from django.db import utils as db_utils
    from kombu.exceptions import OperationalError as BrokerError
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    outages = (db_utils.OperationalError, db_utils.InterfaceError, psycopg.OperationalError,
               psycopg.InterfaceError, RedisConnectionError, RedisTimeoutError, BrokerError)  # fmt: skip
    seen = exc
    for _ in range(4):  # a wrapped cause (Django's DatabaseError wraps psycopg's)
        if seen is None:
            break
        if isinstance(seen, outages):
            database = type(seen).__module__.startswith(("psycopg", "django.db"))
            which = "database" if database else "broker or cache"
            return APIError("service_unavailable", f"The platform's {which} is unavailable; try again shortly.",
                            status=503, retry_after=UNAVAILABLE_RETRY_AFTER)  # fmt: skip
        seen = seen.__cause__ or seen.__context__
    return None


def error_body(code: str, message: str, details=None) -> dict:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def _describe(exc: exceptions.APIException) -> tuple[str, str, dict]:
    if isinstance(exc, APIError):
        return exc.error_code, str(exc.detail), exc.details
    code = getattr(exc, "error_code", None) or next(
        (value for cls, value in _CODES.items() if isinstance(exc, cls)), exc.default_code
    )
    if isinstance(exc, exceptions.ValidationError):
        details = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        return code, "The request is not valid.", details
    return code, str(exc.detail), {}


def _drf_exception_handler(exc, context):
    """DRF's handler, minus its rollback of an atomic block the view does not own.

    DRF marks the connection's current atomic block for rollback when ATOMIC_REQUESTS is on. A view
    that opted out of the request transaction (non_atomic_requests, the MCP proxy) owns no such
    block; whatever encloses it (a test's transaction, a caller's atomic) must not be rolled back
    because the view answered 404.
    """
    view = context.get("view")
    non_atomic = getattr(getattr(view, "dispatch", None), "_non_atomic_requests", ())
    if not non_atomic:
        return drf_exception_handler(exc, context)
    previous = {alias: connections[alias].needs_rollback for alias in non_atomic}
    try:
        return drf_exception_handler(exc, context)
    finally:
        for alias, value in previous.items():
            connections[alias].needs_rollback = value


def exception_handler(exc, context):
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, exceptions.AuthenticationFailed):
        exc = ratelimit.after_failure(exc)  # or 429, once the address has failed too often
    elif not isinstance(exc, exceptions.APIException) and (outage := unavailable(exc)) is not None:
        logger.warning("a dependency is unavailable: %s", type(exc).__name__, exc_info=exc)
        exc = outage
    response = _drf_exception_handler(exc, context)
    if response is None:
        return None  # not a client error: Django's 500 handler answers (and logs) it
    code, message, details = _describe(exc)
    if isinstance(exc, ratelimit.RateLimited):
        details = exc.details
        for name, value in ratelimit.headers(exc.decision).items():
            response[name] = value
    response.data = error_body(code, message, details)
    if response.status_code == 401 and response.has_header("WWW-Authenticate"):
        response["WWW-Authenticate"] = _www_authenticate(exc, message, response["WWW-Authenticate"])
    return response


def _www_authenticate(exc, message: str, challenge: str) -> str:
    # RFC 6750: say why a presented token was refused (not when none was presented).
    if isinstance(exc, exceptions.NotAuthenticated):
        return challenge
    description = message.replace('"', "'")
    return challenge + f', error="invalid_token", error_description="{description}"'


def api_error_parts(exc: exceptions.APIException, *, challenge: str) -> tuple[int, dict, dict]:
    """(status, body, headers) for a client error, exactly as the management API answers it: the
    data plane, which has no DRF view, answers its errors with this."""
    code, message, details = _describe(exc)
    headers = {}
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        headers["WWW-Authenticate"] = _www_authenticate(exc, message, challenge)
    wait = getattr(exc, "wait", None)
    if wait:
        headers["Retry-After"] = str(int(wait))
    if isinstance(exc, ratelimit.RateLimited):
        details = exc.details
        headers.update(ratelimit.headers(exc.decision))
    return exc.status_code, error_body(code, message, details), headers


def request_too_large() -> APIError:
    """A body larger than DATA_UPLOAD_MAX_MEMORY_SIZE, on either plane."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    return APIError("request_too_large", f"The body is larger than the {limit} bytes accepted.", status=413)


@csrf_exempt  # it changes nothing, and a CSRF page would not be the JSON shape
def api_not_found(request, *args, **kwargs):
    """The last route under /api/: an unknown path is the JSON 404 in every profile (DEBUG's
    technical page, or CommonMiddleware's redirect of a POST without its slash, would not be)."""
    return _json_error(status.HTTP_404_NOT_FOUND, "not_found", "Not found.")


def _json_error(status_code: int, code: str, message: str) -> JsonResponse:
    return JsonResponse(error_body(code, message), status=status_code)


def _is_api(request) -> bool:
    return request.path.startswith("/api/")


def bad_request(request, exception=None):
    return _json_error(status.HTTP_400_BAD_REQUEST, "bad_request", "The request could not be understood.")


def permission_denied(request, exception=None):
    return _json_error(status.HTTP_403_FORBIDDEN, "permission_denied", "You may not do this.")


def not_found(request, exception=None):
    if not _is_api(request):
        from django.views.defaults import page_not_found

        return page_not_found(request, exception)
    return _json_error(status.HTTP_404_NOT_FOUND, "not_found", "Not found.")


def server_error(request):
    # Django calls this inside its `except` block: the exception is the one being handled.
    outage = unavailable(sys.exc_info()[1]) if sys.exc_info()[1] is not None else None
    if outage is not None:
        if _is_api(request):
            response = _json_error(503, outage.error_code, str(outage.detail))
        else:
            response = HttpResponse("The service is unavailable for a moment; try again shortly.",
                                    status=503, content_type="text/plain; charset=utf-8")  # fmt: skip
        response["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER)
        return response
    if not _is_api(request):
        from django.views.defaults import server_error as django_server_error

        return django_server_error(request)
    return _json_error(500, "internal_error", "Something went wrong on our side; it has been logged.")


def csrf_failure(request, reason=""):
    if not _is_api(request):
        from django.views.csrf import csrf_failure as django_csrf_failure

        return django_csrf_failure(request, reason)
    return _json_error(status.HTTP_403_FORBIDDEN, "csrf_failed", "CSRF verification failed.")
