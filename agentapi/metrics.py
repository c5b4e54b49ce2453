"""Prometheus metrics, correct with several worker processes.

With PROMETHEUS_MULTIPROC_DIR set (production: gunicorn's workers share it, see
docker/gunicorn.conf.py) every process writes its samples to files there and /metrics adds them up;
without it, the process's own registry is served.
"""

import os
import time

from django.db import transaction
from django.http import HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)


def _reopen_after_fork() -> None:
    """In a forked child, move prometheus_client's multiprocess files to the child's own pid at once.

    prometheus_client does it lazily, on the child's first sample, by closing the parent's files
    first. Celery's billiard closes every inherited descriptor in the processes it starts (the
    pool's children, embedded beat), so that close failed with EBADF and took down whatever was
    recording a sample (django-prometheus counts each new database connection: beat died on its
    first query). Done here, right after fork, the descriptors are still open; one a process's own
    parent closed is let go."""
    check = getattr(values.ValueClass, "_MmapedValue__check_for_pid_change", None)
    if check is None or not check.__closure__:
        return  # not in multiprocess mode
    cells = dict(zip(check.__code__.co_freevars, (cell.cell_contents for cell in check.__closure__), strict=True))
    files = cells.get("files")
    if isinstance(files, dict):
        for opened in list(files.values()):
            try:
                opened.close()
            except OSError:
                pass
        files.clear()
    check(None)  # the pid changed: every value reopens under this process's own files


os.register_at_fork(after_in_child=_reopen_after_fork)

HTTP_REQUESTS = Counter("agentapi_http_requests_total", "HTTP requests answered.", ["method", "route", "status"])
HTTP_LATENCY = Histogram(
    "agentapi_http_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


def _route(request) -> str:
    match = getattr(request, "resolver_match", None)
    return match.route if match and match.route else "unmatched"


class MetricsMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        route = _route(request)
        HTTP_REQUESTS.labels(request.method, route, str(response.status_code)).inc()
        HTTP_LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
        return response


@transaction.non_atomic_requests
def metrics_view(request):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
