"""Agent conversations end to end on real parts: a Celery worker runs the tool loop (pydantic-ai,
the platform's HTTP client) against the model doubles (tests/sessions/model_doubles.py: the only
stand-ins, for hosted models) and real MCP servers (the fastmcp test server, and fastmcp's OAuth
server with the user's own token), on real PostgreSQL and Redis; events are read from two real web
processes (uvicorn)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.test import Client

from audit.models import AuditEvent
from sessions_app import runs
from sessions_app.models import AgentEvent, AgentMessage, AgentRun
from tenants import scoping
from tests.conftest import committed, error_of
from tests.mcp.conftest import configure
from tests.oauth.conftest import connect, oauth_server  # noqa: F401 (a fixture)
from tests.sessions.model_doubles import ModelDouble
from tests.sessions.test_mcp_endpoint import start_web

pytestmark = committed
ROOT = Path(__file__).resolve().parents[2]
SESSIONS = "/api/v1/sessions/"
KEY = "sk-conversation-key-never-shown-0123456789"


def start_worker(**env_overrides) -> subprocess.Popen:
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "agentapi.settings.test", "OUTBOUND_ALLOWED_NETWORKS": "127.0.0.0/8",
           "AGENT_RUN_HEARTBEAT_SECONDS": "0.5", "AGENT_TEXT_COALESCE_SECONDS": "0.05", **env_overrides}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "agentapi", "worker", "--pool=solo", "--loglevel=INFO",
         "--without-heartbeat", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def double():
    return ModelDouble()


@pytest.fixture(scope="module")
def worker():
    process = start_worker()
    output = []
    yield output
    process.terminate()
    output.append(process.communicate(timeout=30)[0])


@pytest.fixture(autouse=True)
def fresh_double(double):
    double.requests.clear()
    double.tool_calls, double.delay, double.chunk_delay, double.fail_with = [], 0.0, 0.0, None
    double.reply = "The double has answered."


def backend(api, double, kind="openai") -> dict:
    base_url = f"{double.url}/v1" if kind == "openai" else double.url
    created = api.post("/api/v1/agents/", {"name": f"model-{kind}", "kind": kind, "base_url": base_url,
                                           "model": "double-1", "api_key": KEY})  # fmt: skip
    assert created.status_code == 201, created.content
    return created.json()


def open_session(api, agent, *configurations) -> dict:
    response = api.post(SESSIONS, {"agent": agent["id"], "mcp_configurations": list(configurations)})
    assert response.status_code == 201, response.content
    return response.json()


def finished(api, session, run_id, timeout=60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = api.get(f"{SESSIONS}{session['id']}/runs/{run_id}/").json()
        if run["status"] != "running":
            return run
        assert time.monotonic() < deadline, run
        time.sleep(0.1)


def send(api, session, content) -> dict:
    response = api.post(f"{SESSIONS}{session['id']}/messages/", {"content": content})
    assert response.status_code == 202, response.content
    return response.json()


def test_a_run_calls_two_tools_on_two_servers_with_the_users_oauth_token(
    alice_api, acme, double, worker, http_server, oauth_server, mcp_settings
):
    guarded = alice_api.post(SESSIONS.replace("sessions", "mcp/configurations"),
                             {"name": "guarded", "url": oauth_server.url, "auth_type": "oauth"}).json()  # fmt: skip
    connect(alice_api, Client(), mcp_configuration=guarded["id"])
    plain = configure(alice_api, name="plain", url=http_server.url)
    agent = backend(alice_api, double)
    session = open_session(alice_api, agent, guarded["id"], plain["id"])
    double.tool_calls = [("guarded__echo", {"text": "with alice's token"}), ("plain__add", {"a": 2, "b": 3})]
    sent = send(alice_api, session, "Echo something and add two numbers.")
    assert sent["message"]["role"] == "user" and sent["run"]["status"] == "running"
    run = finished(alice_api, session, sent["run"]["id"])
    assert run["status"] == "completed", run
    assert run["usage"] == {"input_tokens": 40, "output_tokens": 10} and run["steps"] == 2 and run["tool_calls"] == 2
    messages = alice_api.get(f"{SESSIONS}{session['id']}/messages/").json()["results"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert [m["seq"] for m in messages] == [0, 1, 2, 3, 4]
    assert [c["name"] for c in messages[1]["tool_calls"]] == ["guarded__echo", "plain__add"]
    results = {m["tool_name"]: m for m in messages[2:4]}
    assert results["guarded__echo"]["content"] == "with alice's token" and not results["guarded__echo"]["is_error"]
    assert json.loads(results["plain__add"]["content"]) == {"sum": 5}
    assert messages[4]["content"] == "The double has answered."
    # The model was sent the tools' results, and the backend's key, which appears nowhere else.
    second = double.requests[-1]
    assert second["headers"]["authorization"] == f"Bearer {KEY}"
    assert [m["content"] for m in second["body"]["messages"] if m["role"] == "tool"][0] == "with alice's token"
    with scoping.organization_scope(acme):
        calls = AuditEvent.objects.filter(action="mcp.tool.call")
        # Every call the agent made went through the proxy: audited, with the session named.
        assert sorted((e.details["tool"], e.details["session"]) for e in calls) == [
            ("add", session["id"]), ("echo", session["id"])]  # fmt: skip
        actions = set(AuditEvent.objects.values_list("action", flat=True))
        assert {"agent.message", "agent.run.completed"} <= actions
        stored = list(AgentEvent.objects.filter(session_id=session["id"]).values_list("type", "data"))
    types = [t for t, _ in stored]
    assert types[:2] == ["message_update", "status_change"] and types[-1] == "status_change"
    assert types.count("tool_call") == 2 and types.count("tool_result") == 2
    assert KEY not in json.dumps([d for _, d in stored]) and KEY not in json.dumps(messages)
    usage = alice_api.get(f"{SESSIONS}{session['id']}/usage/").json()
    assert usage["input_tokens"] == 40 and usage["runs"] == 1
