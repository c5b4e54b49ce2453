"""Liveness and readiness probes.

Readiness checks the database, Redis (when configured) and the Celery broker at once, on threads
of their own, and answers within READINESS_TIMEOUT seconds whatever they do (Kubernetes' default
probe timeout is 1 s): a check that has not answered by then has failed ("timeout"). A check listed in READINESS_REQUIRED that fails makes the answer 503; any other failing
check makes it 200 with status "degraded", so a Redis outage need not take every web process out
of the load balancer when the operator says the platform can run without it.
"""

import time
from concurrent.futures import ThreadPoolExecutor, wait

from django.conf import settings
from django.core.cache import cache
from django.db import connection, transaction
from django.http import JsonResponse

from agentapi import ratelimit


@transaction.non_atomic_requests
def live(request):
    return JsonResponse({"status": "ok"})


def _check_database():
    try:
        _select_one()
    except Exception:
        # These threads keep their connections between probes and no request ends here to close a
        # broken one (Django's request_finished does that for request threads). A connection
        # that broke while the database restarted is replaced and the probe tried once more, so
        # that the probe reports the database, not a stale connection of this thread's.
        connection.close()
        _select_one()


def _select_one():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_redis():
    if not settings.REDIS_URL:
        return "not configured"
    client = cache.client.get_client(write=True)  # the cache's own pooled client (django-redis)
    client.ping()


def _check_broker():
    from agentapi.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=1)


CHECKS = {"database": _check_database, "redis": _check_redis, "broker": _check_broker}

# More of the process's state for readiness to show, registered by the apps that own it (agentapi
# imports no app): name -> a function answering at once, without I/O. The MCP pool's breakers
# ("shared" through Redis, or "local") are one.
REPORTS: dict = {}


# Threads of their own (each keeps its database connection), so that a hanging check holds none
# of the web process's request threads; one per check, so that one hanging cannot delay another.
_executor = ThreadPoolExecutor(max_workers=len(CHECKS) * 2, thread_name_prefix="readiness")


def _timed(check):
    started = time.perf_counter()
    note = check()
    return note, round((time.perf_counter() - started) * 1000, 2)


@transaction.non_atomic_requests
def ready(request):
    body = readiness()
    return JsonResponse(body, status=503 if body["status"] == "unavailable" else 200)


def readiness() -> dict:
    """The readiness answer's body (the admin console shows it too)."""
    futures = {name: _executor.submit(_timed, check) for name, check in CHECKS.items()}
    wait(futures.values(), timeout=settings.READINESS_TIMEOUT)
    results, failed = {}, []
    for name, future in futures.items():
        if not future.done():
            results[name] = {"ok": False, "error": "timeout"}
            failed.append(name)
            continue
        try:
            note, ms = future.result()
        except Exception as exc:  # a probe reports every failure, whatever its kind
            results[name] = {"ok": False, "error": type(exc).__name__}
            failed.append(name)
            continue
        results[name] = {"ok": True, "ms": ms}
        if note:
            results[name]["note"] = note
    required_failed = [name for name in failed if name in settings.READINESS_REQUIRED]
    status = "unavailable" if required_failed else ("degraded" if failed else "ok")
    # How requests are limited now: shared through Redis, or the fail mode's way without it.
    redis_failed = "redis" in failed or ratelimit.redis_down()
    limits = "shared" if settings.REDIS_URL and not redis_failed else settings.RATE_LIMIT_FAIL_MODE
    body = {"status": status, "checks": results, "rate_limits": limits}
    body |= {name: report() for name, report in REPORTS.items()}
    return body
