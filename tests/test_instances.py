"""Several instances: two web processes (uvicorn, their own ports) against one PostgreSQL and one
Redis, a Celery worker, real MCP servers, and the model double for the agent. Everything here is
sent over HTTP to the two processes; nothing a test asserts is read from this process's memory.

Elsewhere too: the session MCP endpoint initialized through one process and used through the other
(tests/sessions/test_mcp_endpoint.py), an event stream resumed on the other process
(tests/sessions/test_conversations.py), one rate limit shared at 1% (tests/tenants/test_rate_limits.py).
"""

import threading
import time
from pathlib import Path

import httpx
import pytest

from sessions_app.models import AgentEvent
from tenants import scoping
from tests.conftest import committed
from tests.mcp.conftest import RunningServer, http_server, mcp_settings  # noqa: F401 (fixtures)
from tests.sessions.model_doubles import ModelDouble
from tests.sessions.test_conversations import (
    backend,
    ended,
    open_session,
    read_stream,
    worker,  # noqa: F401 (a fixture)
)
from tests.sessions.test_mcp_endpoint import start_web

# mcp_settings: loopback servers allowed in this process too (it configures them).
pytestmark = [committed, pytest.mark.usefixtures("mcp_settings")]
ROOT = Path(__file__).resolve().parents[1]
# The breaker opens after two failures and is re-read from Redis every 0.2 s.
BREAKER_ENV = {"MCP_BREAKER_FAIL_MAX": "2", "MCP_BREAKER_RESET_TIMEOUT": "60", "MCP_BREAKER_SYNC_INTERVAL": "0.2",
               "MCP_CONNECT_TIMEOUT": "2"}  # fmt: skip


@pytest.fixture(scope="module")
def web():
    started = [start_web(**BREAKER_ENV), start_web(**BREAKER_ENV)]
    yield [base for _, base in started]
    for process, _ in started:
        process.kill()
        process.wait(10)


@pytest.fixture
def clients(web, alice_api):
    """An HTTP client for each web process, with Alice's key."""
    auth = {"Authorization": alice_api.headers["Authorization"]}
    made = [httpx.Client(base_url=base, headers=auth, timeout=30) for base in web]
    yield made
    for client in made:
        client.close()


def tool_call(client, configuration: dict, text: str) -> httpx.Response:
    return client.post(
        f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/",
        json={"name": "echo", "arguments": {"text": text}},
    )


def configure(client, url: str, name: str = "server") -> dict:
    response = client.post("/api/v1/mcp/configurations/", json={"name": name, "url": url})
    assert response.status_code == 201, response.text
    return response.json()


def test_a_breaker_opened_through_one_process_is_open_in_the_other(clients):
    server = RunningServer()
    port = server.port
    configuration = configure(clients[0], server.url)
    assert tool_call(clients[1], configuration, "up").status_code == 200  # the other's pool has a session
    server.stop()
    for _ in range(2):  # MCP_BREAKER_FAIL_MAX failures, all through the first process
        assert tool_call(clients[0], configuration, "down").status_code in (502, 504)
    restarted = RunningServer("--port", str(port))
    try:
        time.sleep(0.5)  # the other's local copy of a closed breaker is re-read within the sync interval
        refused = tool_call(clients[1], configuration, "paused")
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "upstream_unavailable"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert restarted.stats() == {}  # the paused server was not called by either process
    finally:
        restarted.stop()


def test_a_configuration_changed_through_one_process_replaces_the_others_pooled_session(clients):
    first, second = RunningServer(), RunningServer()
    try:
        configuration = configure(clients[0], first.url)
        for text in ("a", "b"):
            assert tool_call(clients[1], configuration, text).status_code == 200
        assert first.stats().get("tools/call") == 2
        changed = clients[0].patch(f"/api/v1/mcp/configurations/{configuration['id']}/", json={"url": second.url})
        assert changed.status_code == 200, changed.text
        # The other process hears the change a moment after it commits (agentapi.db.aio.Changes); a
        # call in that moment is answered as one made just before it.
        answers, deadline = [], time.monotonic() + 0.5
        while not second.stats().get("tools/call") and time.monotonic() < deadline:
            answers.append(tool_call(clients[1], configuration, "c"))
        assert all(a.status_code == 200 and a.json()["content"][0]["text"] == "c" for a in answers)
        assert second.stats().get("tools/call") == 1
        assert first.stats().get("tools/call") == 2 + len(answers) - 1
    finally:
        first.stop()
        second.stop()


def test_rate_limits_are_one_limit_across_both_processes(clients, acme, http_server):  # noqa: F811
    acme.settings = {**acme.settings, "rate_limits": {"mcp": {"credential": "6/minute"}}}
    acme.save(update_fields=["settings"])
    configuration = configure(clients[0], http_server.url)
    statuses = [tool_call(clients[i % 2], configuration, str(i)).status_code for i in range(10)]
    assert statuses == [200] * 6 + [429] * 4, statuses
    refused = tool_call(clients[0], configuration, "x")
    assert refused.headers["RateLimit-Policy"].startswith('"mcp-credential";q=6;w=60, "mcp-organization";')


@pytest.fixture(scope="module")
def double():
    return ModelDouble()


@pytest.mark.usefixtures("worker")
def test_a_session_followed_on_one_process_while_its_messages_go_to_the_other(alice_api, acme, clients, web, double):
    session = open_session(alice_api, backend(alice_api, double))
    double.reply = "Answered through the other process."
    auth = {"Authorization": alice_api.headers["Authorization"]}
    live: list = []
    url = f"{web[0]}/api/v1/sessions/{session['id']}/events/"
    follower = threading.Thread(target=lambda: live.extend(read_stream(url, auth, ended)))
    follower.start()
    time.sleep(0.5)
    sent = clients[1].post(f"/api/v1/sessions/{session['id']}/messages/", json={"content": "Hello."})
    assert sent.status_code == 202, sent.text
    follower.join(60)
    assert not follower.is_alive() and ended(live)
    with scoping.organization_scope(acme):
        stored = list(AgentEvent.objects.filter(session_id=session["id"]).order_by("id").values_list("id", "type"))
    assert [(event["id"], event["event"]) for event in live[1:]] == stored
    assert any(
        e["event"] == "message_update" and e["data"].get("content") == double.reply and e["data"]["role"] == "assistant"
        for e in live
    )
    # The conversation, read through the first process, is what the run stored.
    messages = clients[0].get(f"/api/v1/sessions/{session['id']}/messages/").json()["results"]
    assert [m["role"] for m in messages] == ["user", "assistant"] and messages[1]["content"] == double.reply
