"""A dependency that is down is the platform's 503 with Retry-After, in the error shape, on both
planes; never a 500 that blames the code. A real web process (uvicorn) is given a PostgreSQL
address nothing listens on; tests/faults/run.py (`make faults`) restarts the real servers under load."""

import socket
import urllib.parse

import httpx
import pytest

from tests.sessions.test_mcp_endpoint import start_web


@pytest.fixture(scope="module")
def web_without_database():
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = urllib.parse.urlsplit(__import__("os").environ["DATABASE_URL"])
    password = url.password
    process, base = start_web(DATABASE_URL=url._replace(netloc=f"{url.username}:{password}@127.0.0.1:{port}").geturl())
    yield base, password
    process.kill()
    process.wait(10)
    log = process.stderr.read().decode()
    assert password not in log  # the connection string's secret is never logged


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/me/"),  # the management plane (DRF, authentication reads the database)
        ("POST", "/api/v1/sessions/"),
        ("POST", "/api/v1/mcp/configurations/1/tools/call/"),  # the data plane (async psycopg)
        ("GET", "/agentapi/sessions/00000000-0000-0000-0000-000000000000/status"),
    ],
)
def test_an_unreachable_database_is_503_with_retry_after_never_500(web_without_database, method, path):
    base, password = web_without_database
    response = httpx.request(method, base + path, headers={"Authorization": "Bearer aak_notarealkey_0123456789"},
                             json={"name": "echo", "arguments": {}} if method == "POST" else None, timeout=30)  # fmt: skip
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    error = response.json()["error"]
    assert error["code"] == "service_unavailable" and "database" in error["message"]
    assert "127.0.0.1" not in response.text and password not in response.text


def test_readiness_says_the_database_is_down(web_without_database):
    base, _ = web_without_database
    response = httpx.get(f"{base}/health/ready/", timeout=30)
    assert response.status_code == 503
    assert response.json()["checks"]["database"]["ok"] is False
    assert response.json()["breakers"] == "shared"  # Redis is up: breakers are still shared
