"""The session MCP endpoint `/mcp/sessions/{id}/`, served by two real web processes (uvicorn, the ASGI
application) on real PostgreSQL and Redis, used by clients not written here: fastmcp's `Client`
and the MCP Inspector's CLI from npm. Who may use it, and that a client initialized through one
process goes on through the other."""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import pytest
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport

from audit.models import AuditEvent
from tenants import scoping
from tests.conftest import Api, committed, make_key
from tests.mcp.conftest import configure, npm_installed

pytestmark = committed
ROOT = Path(__file__).resolve().parents[2]
SESSIONS = "/api/v1/sessions/"
INSPECTOR = "@modelcontextprotocol/inspector@2.12.0"


def start_web(**env_overrides) -> tuple[subprocess.Popen, str]:
    from tests.services import free_port

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "agentapi.settings.test", "OUTBOUND_ALLOWED_NETWORKS": "127.0.0.0/8",
           "ALLOWED_HOSTS": "127.0.0.1", **env_overrides}  # fmt: skip
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "agentapi.asgi:application", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/health/live", timeout=2)
            return process, base
        except (ConnectionError, urllib.error.URLError):
            assert time.monotonic() < deadline and process.poll() is None, process.stderr.read()
            time.sleep(0.2)


@pytest.fixture(scope="module")
def web():
    """Two web processes, as a deployment without sticky routing has them."""
    started = [start_web(), start_web()]
    yield [base for _, base in started]
    for process, _ in started:
        process.kill()
        process.wait(10)


def open_session(api, *configurations) -> dict:
    response = api.post(SESSIONS, {"mcp_configurations": list(configurations)})
    assert response.status_code == 201, response.content
    return response.json()


def endpoint(base: str, session: dict) -> str:
    assert session["mcp_url"].endswith(f"/mcp/sessions/{session['id']}/")
    return f"{base}/mcp/sessions/{session['id']}/"


def with_fastmcp(url: str, credential: str, work):
    async def run():
        transport = StreamableHttpTransport(url, headers={"Authorization": f"Bearer {credential}"})
        async with Client(transport) as client:
            return await work(client)

    return asyncio.run(run())


def test_fastmcp_lists_and_calls_the_sessions_tools_with_its_token(alice_api, http_server, web, acme):
    server = configure(alice_api, name="tests", url=http_server.url)
    session = open_session(alice_api, server["id"])

    async def work(client):
        tools = await client.list_tools()
        called = await client.call_tool("tests__add", {"a": 2, "b": 3})
        resources = await client.list_resources()
        read = await client.read_resource(next(r.uri for r in resources if "greeting" in str(r.uri)))
        prompts = await client.list_prompts()
        prompt = await client.get_prompt("tests__review", {"language": "Rust"})
        return tools, called, resources, read, prompts, prompt

    tools, called, resources, read, prompts, prompt = with_fastmcp(
        endpoint(web[0], session), session["mcp_token"], work
    )
    names = {tool.name for tool in tools}
    assert {"tests__echo", "tests__add", "tests__media"} <= names and all(len(n) <= 64 for n in names)
    assert called.structured_content == {"sum": 5} or "5" in called.content[0].text
    assert all(str(r.uri).startswith("agentapi://tests/") for r in resources)
    assert read[0].text
    assert [p.name for p in prompts] == ["tests__review"] and "Rust" in str(prompt.messages)
    with scoping.organization_scope(acme):
        event = AuditEvent.objects.filter(action="mcp.tool.call").latest("id")
    assert event.details == {**event.details, "tool": "add", "session": session["id"]}


def test_an_api_key_works_and_everything_else_is_refused(alice, alice_api, bob, charlie, http_server, web):
    server = configure(alice_api, name="tests", url=http_server.url)
    session = open_session(alice_api, server["id"])
    other = open_session(alice_api, server["id"])
    url = endpoint(web[0], session)

    async def names(client):
        return [tool.name for tool in await client.list_tools()]

    assert "tests__echo" in with_fastmcp(url, make_key(alice, "agent"), names)
    ping = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    accept = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
    refused = httpx.post(url, json=ping, headers=accept)
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert refused.json()["error"]["code"] == "not_authenticated"
    for credential, status in [
        (other["mcp_token"], 401),  # another session's token: good for that session only
        ("ast_" + "x" * 43, 401),
        (make_key(bob, "bob"), 404),  # another member's session
        (make_key(charlie, "charlie"), 404),  # another organization's
    ]:
        response = httpx.post(url, json=ping, headers={**accept, "Authorization": f"Bearer {credential}"})
        assert response.status_code == status, (credential[:8], response.text)
        assert set(response.json()) == {"error"}
    assert alice_api.delete(f"{SESSIONS}{session['id']}/").status_code == 204
    ended = httpx.post(url, json=ping, headers={**accept, "Authorization": f"Bearer {session['mcp_token']}"})
    assert ended.status_code == 401  # its token ended with it


def test_a_client_initialized_through_one_process_goes_on_through_the_other(alice_api, http_server, web):
    server = configure(alice_api, name="tests", url=http_server.url)
    session = open_session(alice_api, server["id"])
    first, second = (endpoint(base, session) for base in web)
    headers = {"Authorization": f"Bearer {session['mcp_token']}", "Accept": "application/json, text/event-stream"}
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "two-processes", "version": "1"}}}  # fmt: skip
    answered = httpx.post(first, json=initialize, headers=headers)
    assert answered.status_code == 200, answered.text
    version = answered.json()["result"]["protocolVersion"]
    headers = {**headers, "MCP-Protocol-Version": version, **({"Mcp-Session-Id": answered.headers["mcp-session-id"]}
               if "mcp-session-id" in answered.headers else {})}  # fmt: skip
    notified = httpx.post(second, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    assert notified.status_code == 202
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "tests__echo", "arguments": {"text": "hop"}},
    }
    for url in (second, first, second):
        result = httpx.post(url, json=call, headers=headers)
        assert result.status_code == 200, result.text
        assert result.json()["result"]["content"][0]["text"] == "hop"


@pytest.fixture(scope="session")
def inspector() -> list[str]:
    """The MCP Inspector from npm (not written here), its command line."""
    entry = npm_installed(INSPECTOR, "@modelcontextprotocol/inspector/clients/launcher/build/index.js", "npm-inspector")
    return [shutil.which("node"), entry, "--cli"]


def test_the_mcp_inspector_cli_lists_and_calls_the_sessions_tools(alice_api, http_server, web, inspector, tmp_path):
    server = configure(alice_api, name="tests", url=http_server.url)
    session = open_session(alice_api, server["id"])
    url = endpoint(web[1], session)
    common = [url, "--transport", "http", "--header", f"Authorization: Bearer {session['mcp_token']}"]
    env = {**os.environ, "HOME": str(tmp_path), "MCP_CATALOG_PATH": str(tmp_path / "mcp.json")}

    def run(*arguments) -> dict:
        done = subprocess.run([*inspector, *common, *arguments], capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr + done.stdout
        return json.loads(done.stdout)

    listed = run("--method", "tools/list")
    assert "tests__echo" in [tool["name"] for tool in listed["tools"]]
    called = run("--method", "tools/call", "--tool-name", "tests__echo", "--tool-arg", "text=from the inspector")
    assert called["content"][0]["text"] == "from the inspector"


def test_bad_input_at_the_endpoint_is_never_a_server_error(alice_api, http_server):
    """Through the ASGI application in this process: what the endpoint's own checks and the SDK's
    answer to bodies no client should send (JSON-RPC errors, 4xx), never a 500."""
    server = configure(alice_api, name="tests", url=http_server.url)
    session = open_session(alice_api, server["id"])
    path = f"/mcp/sessions/{session['id']}/"
    accept = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
    bodies = [
        "[" * 400 + "]" * 400,
        json.dumps({f"key{i}": [i] for i in range(50_000)}),
        "not json",
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x" * 5000}}),
        json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "tests__echo", "arguments": 7}}
        ),
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "agentapi://tests/%ZZ"}}),
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "prompts/get", "params": {"name": "tests__nothing"}}),
        json.dumps({"jsonrpc": "2.0", "id": 1, "method": "no/such", "params": {}}),
        json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}] * 3),
    ]
    for body in bodies:
        response = alice_api.request("post", path, body, **accept)
        assert response.status_code < 500, (body[:80], response.status_code, response.content[:300])
    for url in (path, "/mcp/sessions/not-a-uuid/", f"/mcp/sessions/{'0' * 36}/"):
        response = alice_api.request("put", url, "{}", **accept)
        assert 400 <= response.status_code < 500 and set(response.json()) == {"error"}


def test_tools_list_answered_directly_is_what_the_sdks_server_answers(alice_api, http_server, monkeypatch):
    from sessions_app import mcp_server

    one = configure(alice_api, name="one", url=http_server.url)
    two = configure(alice_api, name="two", url=http_server.url)
    session = open_session(alice_api, one["id"], two["id"])
    path = f"/mcp/sessions/{session['id']}/"
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18",
               "Authorization": f"Bearer {session['mcp_token']}"}  # fmt: skip
    request = {"jsonrpc": "2.0", "id": "list-1", "method": "tools/list", "params": {}}
    direct = alice_api.request("post", path, request, **headers)
    monkeypatch.setattr(mcp_server, "DIRECT_TOOLS_LIST", False)
    through_sdk = alice_api.request("post", path, request, **headers)
    assert direct.status_code == through_sdk.status_code == 200
    assert direct.json() == through_sdk.json()
    assert len(direct.json()["result"]["tools"]) > 10 and direct.json()["id"] == "list-1"


def test_the_embedded_profiles_way_serves_the_same_endpoint(alice, alice_api, bob, http_server, settings):
    """Without the data plane's async database access (as on SQLite), the ORM on a worker thread."""
    settings.DATA_PLANE_ENABLED = False
    server = configure(alice_api, name="tests", url=http_server.url)
    session = open_session(alice_api, server["id"])
    path = f"/mcp/sessions/{session['id']}/"
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
    for credential in (session["mcp_token"], make_key(alice, "embedded")):
        auth = {**headers, "Authorization": f"Bearer {credential}"}
        listed = alice_api.request("post", path, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, **auth)
        assert listed.status_code == 200 and "tests__echo" in str(listed.json()), listed.content[:300]
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "tests__echo", "arguments": {"text": "embedded"}}}  # fmt: skip
        called = alice_api.request("post", path, call, **auth)
        assert called.json()["result"]["content"][0]["text"] == "embedded"
    for credential, status in ((make_key(bob, "bob"), 404), ("ast_unknown", 401), (None, 401)):
        auth = {**headers, **({"Authorization": f"Bearer {credential}"} if credential else {})}
        refused = Api().request("post", path, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, **auth)
        assert refused.status_code == status, refused.content
