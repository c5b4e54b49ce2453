"""Request ids, JSON log lines, health probes and Prometheus metrics."""

import io
import json
import logging
import os
import subprocess
import sys

from django.conf import settings as django_settings

from agentapi.logging import ContextFilter


def test_it_keeps_the_callers_request_id_and_makes_one_otherwise(alice_api):
    assert alice_api.get("/api/v1/me/", **{"X-Request-ID": "abc-123"})["X-Request-ID"] == "abc-123"
    made = alice_api.get("/api/v1/me/")["X-Request-ID"]
    assert len(made) == 32
    assert alice_api.get("/api/v1/me/", **{"X-Request-ID": "bad id\n"})["X-Request-ID"] != "bad id\n"


def test_log_lines_are_json_with_request_organization_and_user(alice_api, alice):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.getLogger().handlers[0].formatter)
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("agentapi.access")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        alice_api.get("/api/v1/me/", **{"X-Request-ID": "log-1"})
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert line["request_id"] == "log-1"
    assert line["organization"] == "acme"
    assert line["user"] == str(alice.user_id)
    assert line["status"] == 200 and line["path"] == "/api/v1/me/"
    assert "Bearer" not in stream.getvalue()


def test_liveness(client):
    assert client.get("/health/live/").json() == {"status": "ok"}


def test_readiness_checks_database_redis_and_broker(client, db, settings):
    # What is checked, not how fast: the first broker check of a process imports its transport,
    # which on a loaded machine can take longer than the probe's default bound.
    settings.READINESS_TIMEOUT = 5.0
    body = client.get("/health/ready/").json()
    assert body["status"] == "ok", body
    assert {name for name, check in body["checks"].items() if check["ok"]} == {"database", "redis", "broker"}
    assert body["rate_limits"] == "shared" and body["breakers"] == "shared"


def test_readiness_is_degraded_when_redis_is_down_and_503_where_it_is_required(client, db, settings):
    settings.REDIS_URL = "redis://127.0.0.1:9/0"
    settings.CACHES = {"default": {**django_settings.CACHES["default"], "LOCATION": settings.REDIS_URL}}
    degraded = client.get("/health/ready/")
    assert degraded.status_code == 200 and degraded.json()["status"] == "degraded"
    assert degraded.json()["checks"]["redis"] == {"ok": False, "error": "ConnectionError"}
    assert degraded.json()["rate_limits"] == settings.RATE_LIMIT_FAIL_MODE == "local"  # each process alone
    settings.READINESS_REQUIRED = ["database", "redis"]
    response = client.get("/health/ready/")
    assert response.status_code == 503 and response.json()["status"] == "unavailable"


def test_metrics_count_requests_by_route(alice_api, client):
    alice_api.get("/api/v1/me/")
    text = client.get("/metrics").content.decode()
    assert 'agentapi_http_requests_total{method="GET",route="api/v1/me/",status="200"}' in text


SERVE_REQUESTS = """
from django.core.cache import cache
from django.db import connection
from django.test import Client
client = Client()
for _ in range({n}):
    client.get("/health/live/")
    cache.get("metrics-test")
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
"""


def sample(scrape: str, prefix: str) -> float:
    return float(next(line for line in scrape.splitlines() if line.startswith(prefix)).split()[-1])


def test_metrics_add_up_across_worker_processes(tmp_path, db):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    manage = [sys.executable, "manage.py", "shell", "-c"]
    for n in (3, 4):  # two "workers", each its own process
        subprocess.run([*manage, SERVE_REQUESTS.format(n=n)], env=env, check=True, capture_output=True)
    scrape = subprocess.run(
        [*manage, "from django.test import Client; print(Client().get('/metrics').content.decode())"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert sample(scrape, 'agentapi_http_requests_total{method="GET",route="health/live/",status="200"}') == 7.0
    # django-prometheus's request, cache and database metrics add up the same way (its request
    # count includes the scrape, counted before the view answers).
    assert sample(scrape, 'django_http_requests_total_by_method_total{method="GET"}') == 8.0
    assert sample(scrape, 'django_cache_get_total{backend="redis"}') == 7.0
    assert sample(scrape, 'django_db_execute_total{alias="default",vendor="postgresql"}') >= 7.0
    assert "django_db_query_duration_seconds_bucket" in scrape


def test_readiness_answers_within_its_timeout_when_a_check_hangs(client, db, settings):
    import socket
    import time

    silent = socket.socket()  # accepts connections and never answers: a hung Redis
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        settings.REDIS_URL = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        settings.CACHES = {"default": {**django_settings.CACHES["default"], "LOCATION": settings.REDIS_URL}}
        settings.READINESS_TIMEOUT = 0.5
        started = time.perf_counter()
        response = client.get("/health/ready/")
        elapsed = time.perf_counter() - started
    finally:
        silent.close()
    assert elapsed < 0.9, elapsed
    body = response.json()
    assert response.status_code == 200 and body["status"] == "degraded"
    assert body["checks"]["redis"] == {"ok": False, "error": "timeout"}
    assert body["checks"]["database"]["ok"] is True


FORK_AS_BILLIARD_DOES = """
import os, sys
from django.db import connection
from agentapi import metrics
connection.ensure_connection()  # django-prometheus counts it: this process has its metric files open
metrics.HTTP_REQUESTS.labels("GET", "parent", "200").inc()
child = os.fork()
if child == 0:
    code = 0
    try:
        os.closerange(3, 65536)  # what Celery's billiard does in the processes it starts
        metrics.HTTP_REQUESTS.labels("GET", "child", "200").inc()
        metrics.HTTP_REQUESTS.labels("GET", "child", "200").inc()
        grandchild = os.fork()  # and a process the child starts in turn
        if grandchild == 0:
            metrics.HTTP_REQUESTS.labels("GET", "grandchild", "200").inc()
            os._exit(0)
        code = os.waitpid(grandchild, 0)[1]
    except Exception as exc:
        print(repr(exc), file=sys.stderr)
        code = 1
    os._exit(code)
print("child exit", os.waitpid(child, 0)[1])
"""


def test_metrics_survive_a_fork_that_closes_inherited_descriptors(tmp_path, db):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    manage = [sys.executable, "manage.py", "shell", "-c"]
    run = subprocess.run([*manage, FORK_AS_BILLIARD_DOES], env=env, capture_output=True, text=True, timeout=60)
    assert "child exit 0" in run.stdout, run.stderr[-2000:]
    scrape = subprocess.run(
        [*manage, "from django.test import Client; print(Client().get('/metrics').content.decode())"],
        env=env, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    for route, count in (("parent", 1.0), ("child", 2.0), ("grandchild", 1.0)):
        assert sample(scrape, f'agentapi_http_requests_total{{method="GET",route="{route}",status="200"}}') == count
