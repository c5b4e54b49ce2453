"""Faults: a server that hangs, dies mid-call, answers errors or is slow while others stay fast;
dropped sessions; the circuit breaker (opening, shared with another process, probing); Redis down."""

import os
import signal
import subprocess
import sys
import threading
import time

from django.conf import settings as django_settings

from mcp import pool
from mcp.credentials import target_for
from mcp.models import MCPConfiguration
from tenants import scoping
from tests.conftest import committed, error_of
from tests.mcp.conftest import RunningServer, configure

# The calls go through the data plane, which reads committed rows on its own connections.
pytestmark = committed


def call(api, configuration, name, arguments=None):
    return api.post(
        f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/", {"name": name, "arguments": arguments or {}}
    )


def timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def test_a_hanging_server_times_out_and_the_session_stays_usable(alice_api, http_server, settings):
    settings.MCP_CALL_TIMEOUT = 1.5
    configuration = configure(alice_api, url=http_server.url)
    response, elapsed = timed(call, alice_api, configuration, "hang")
    assert response.status_code == 504 and error_of(response)["code"] == "upstream_timeout"
    assert 1.4 < elapsed < 5
    assert call(alice_api, configuration, "echo", {"text": "still here"}).json()["content"][0]["text"] == "still here"


def test_a_server_that_dies_mid_call_is_a_502_and_the_call_is_not_resent(alice_api, own_server, acme):
    from audit.models import AuditEvent

    configuration = configure(alice_api, url=own_server.url)
    response = call(alice_api, configuration, "die")
    assert response.status_code == 502 and error_of(response)["code"] == "upstream_error"
    assert own_server.process.wait(5) == 3  # it died in the call; a resend would have found it gone
    with scoping.organization_scope(acme):
        event = AuditEvent.objects.get(action="mcp.tool.call")
    assert event.outcome == "failure" and event.details["error"] == "upstream_error"


def test_a_restarted_http_server_is_reached_again_transparently(alice_api, own_server):
    configuration = configure(alice_api, url=own_server.url)
    assert call(alice_api, configuration, "echo", {"text": "one"}).status_code == 200
    port = own_server.port
    own_server.stop()
    restarted = RunningServer("--port", str(port))
    try:
        response = call(alice_api, configuration, "echo", {"text": "two"})
        assert response.status_code == 200, response.content
        assert response.json()["content"][0]["text"] == "two"
        assert restarted.handshakes() <= 1 and restarted.stats()["tools/call"] == 1  # sent once
    finally:
        restarted.stop()


def pid_of(api, configuration) -> int:
    return int(call(api, configuration, "pid").json()["content"][0]["text"])


def test_a_dead_stdio_server_is_replaced_for_reads_and_a_tool_call_is_never_resent(alice_api, test_template):
    configuration = configure(alice_api, transport="stdio", stdio_template="test-server")
    first = pid_of(alice_api, configuration)
    os.kill(first, signal.SIGKILL)
    listed = alice_api.get(f"/api/v1/mcp/configurations/{configuration['id']}/resources/")
    assert listed.status_code == 200  # a read: re-established once, transparently
    second = pid_of(alice_api, configuration)
    assert second != first
    os.kill(second, signal.SIGKILL)
    # A tool call on a session whose process died cannot prove it was not delivered: not resent.
    response = call(alice_api, configuration, "echo", {"text": "maybe twice"})
    assert response.status_code == 502 and error_of(response)["code"] == "upstream_error"
    assert call(alice_api, configuration, "echo", {"text": "next"}).json()["content"][0]["text"] == "next"


def test_a_protocol_error_from_the_server_is_a_clear_error(alice_api, http_server):
    configuration = configure(alice_api, url=http_server.url)
    response = alice_api.post(
        f"/api/v1/mcp/configurations/{configuration['id']}/resources/read/", {"uri": "test://missing"}
    )
    assert response.status_code in (400, 502)
    assert error_of(response)["code"] in ("upstream_rejected", "upstream_error")
    assert "missing" in error_of(response)["message"].lower() or "unknown" in error_of(response)["message"].lower()


def test_a_slow_server_does_not_starve_the_others(alice_api, http_server, acme, settings):
    settings.MCP_MAX_CONCURRENT_CALLS = 1
    settings.MCP_QUEUE_TIMEOUT = 0.3
    slow = configure(alice_api, name="slow", url=http_server.url)
    fast = configure(alice_api, name="fast", url=http_server.url)
    with scoping.organization_scope(acme):
        target = target_for(MCPConfiguration.objects.get(pk=slow["id"]))

    async def sleep_three(client):
        return await client.call_tool("slow", {"seconds": 3})

    in_flight = threading.Thread(target=pool.call, args=(target, sleep_three), kwargs={"reads": False})
    in_flight.start()
    time.sleep(0.8)
    busy, busy_elapsed = timed(call, alice_api, slow, "echo", {"text": "x"})
    assert busy.status_code == 503 and error_of(busy)["code"] == "upstream_busy"
    assert busy["Retry-After"] == "1" and busy_elapsed < 1.5
    answered, fast_elapsed = timed(call, alice_api, fast, "echo", {"text": "fast"})
    assert answered.status_code == 200 and fast_elapsed < 1.5
    in_flight.join(10)


BREAKER_PROBE = """
import asyncio, sys
from agentapi.resilience import Breaker, BreakerOpen, SharedRedis

async def main():
    breaker = Breaker(sys.argv[2], SharedRedis(sys.argv[1]), fail_max=2, reset_timeout=30)
    try:
        await breaker.before_call()
        print("closed")
    except BreakerOpen as exc:
        print("open", exc.retry_after)
asyncio.run(main())
"""


def test_the_breaker_opens_answers_fast_and_is_open_in_every_process(alice_api, own_server, client, settings):
    settings.MCP_BREAKER_FAIL_MAX = 2
    configuration = configure(alice_api, url=own_server.url)
    assert call(alice_api, configuration, "echo", {"text": "up"}).status_code == 200
    port = own_server.port
    own_server.stop()
    for _ in range(2):
        assert call(alice_api, configuration, "echo", {"text": "down"}).status_code == 502
    restarted = RunningServer("--port", str(port))
    try:
        response, elapsed = timed(call, alice_api, configuration, "echo", {"text": "paused"})
        assert response.status_code == 503 and error_of(response)["code"] == "upstream_unavailable"
        assert 1 <= int(response["Retry-After"]) <= 30
        assert elapsed < 0.2
        assert restarted.stats() == {}  # the server was not touched
        other_process = subprocess.run(
            [sys.executable, "-c", BREAKER_PROBE, django_settings.REDIS_URL, f"mcp:{configuration['id']}"],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        assert other_process.stdout.split()[0] == "open"
        metrics = client.get("/metrics").content.decode()
        assert f'agentapi_mcp_breaker_open{{configuration="{configuration["id"]}"}} 1.0' in metrics
    finally:
        restarted.stop()


def test_after_the_reset_timeout_one_probe_closes_the_breaker(alice_api, own_server, settings):
    settings.MCP_BREAKER_FAIL_MAX = 1
    settings.MCP_BREAKER_RESET_TIMEOUT = 1.0
    configuration = configure(alice_api, url=own_server.url)
    port = own_server.port
    own_server.stop()
    assert call(alice_api, configuration, "echo", {"text": "down"}).status_code == 502
    assert call(alice_api, configuration, "echo", {"text": "paused"}).status_code == 503
    restarted = RunningServer("--port", str(port))
    try:
        time.sleep(1.2)
        assert call(alice_api, configuration, "echo", {"text": "probe"}).status_code == 200
        assert call(alice_api, configuration, "echo", {"text": "closed"}).status_code == 200
    finally:
        restarted.stop()


def test_with_redis_down_calls_go_on_with_local_breakers(alice_api, own_server, client, settings):
    settings.REDIS_URL = "redis://127.0.0.1:9/0"
    settings.CACHES = {"default": {**django_settings.CACHES["default"], "LOCATION": settings.REDIS_URL}}
    settings.MCP_BREAKER_FAIL_MAX = 2
    configuration = configure(alice_api, url=own_server.url)
    tools = alice_api.get(f"/api/v1/mcp/configurations/{configuration['id']}/tools/")
    assert tools.status_code == 200 and tools.json()["count"] >= 8  # no cache: read from the server
    assert call(alice_api, configuration, "echo", {"text": "no redis"}).status_code == 200
    own_server.stop()
    assert [call(alice_api, configuration, "echo").status_code for _ in range(3)] == [502, 502, 503]
    ready = client.get("/health/ready/").json()
    assert ready["status"] == "degraded" and ready["checks"]["redis"]["ok"] is False
