"""Calls through the platform to real MCP servers: tools, resources, prompts, every content type,
the pooled session (no handshake per call), bearer tokens, stdio, and a server from PyPI."""

import base64

from mcp.models import MCPConfiguration
from tenants import scoping
from tests.conftest import committed, error_of
from tests.mcp.conftest import PNG_BYTES, TOKEN, configure

# The calls go through the data plane, which reads committed rows on its own connections.
pytestmark = committed


def call(api, configuration, name, arguments=None):
    return api.post(
        f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/", {"name": name, "arguments": arguments or {}}
    )


def test_it_calls_a_tool_and_answers_in_the_documented_shape(alice_api, http_server):
    configuration = configure(alice_api, url=http_server.url)
    response = call(alice_api, configuration, "add", {"a": 2, "b": 3})
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"content", "structured_content", "is_error", "configuration", "duration_ms"}
    assert body["structured_content"] == {"sum": 5}
    assert body["is_error"] is False and body["configuration"] == configuration["id"]


def test_every_content_type_passes_through_intact(alice_api, http_server):
    configuration = configure(alice_api, url=http_server.url)
    content = call(alice_api, configuration, "media").json()["content"]
    assert [block["type"] for block in content] == ["text", "image", "audio", "resource", "resource_link"]
    assert base64.b64decode(content[1]["data"]) == PNG_BYTES and content[1]["mimeType"] == "image/png"
    assert content[2]["mimeType"] == "audio/wav"
    assert content[3]["resource"] == {"uri": "test://embedded", "mimeType": "text/plain", "text": "embedded text"}
    assert content[4]["uri"] == "test://linked" and content[4]["name"] == "linked"


def test_a_tool_error_is_a_result_not_a_failure(alice_api, http_server):
    configuration = configure(alice_api, url=http_server.url)
    body = call(alice_api, configuration, "fail").json()
    assert body["is_error"] is True
    assert "failed on purpose" in body["content"][0]["text"]


def test_in_steady_state_a_call_makes_no_handshake(alice_api, own_server):
    configuration = configure(alice_api, url=own_server.url)
    call(alice_api, configuration, "echo", {"text": "warm up"})
    before = own_server.handshakes()
    for i in range(10):
        assert call(alice_api, configuration, "echo", {"text": str(i)}).json()["content"][0]["text"] == str(i)
    alice_api.get(f"/api/v1/mcp/configurations/{configuration['id']}/resources/")
    assert own_server.handshakes() == before == 1
    assert own_server.stats()["tools/call"] == 11


def test_resources_and_prompts(alice_api, http_server):
    configuration = configure(alice_api, url=http_server.url)
    base = f"/api/v1/mcp/configurations/{configuration['id']}"
    uris = {r["uri"] for r in alice_api.get(f"{base}/resources/").json()["resources"]}
    assert {"test://greeting", "test://blob"} <= uris
    text = alice_api.post(f"{base}/resources/read/", {"uri": "test://greeting"}).json()
    assert text["contents"][0]["text"] == "hello from a resource"
    blob = alice_api.post(f"{base}/resources/read/", {"uri": "test://blob"}).json()
    assert base64.b64decode(blob["contents"][0]["blob"]) == b"\x00\x01binary"
    prompts = alice_api.get(f"{base}/prompts/").json()["prompts"]
    assert [p["name"] for p in prompts] == ["review"]
    got = alice_api.post(f"{base}/prompts/get/", {"name": "review", "arguments": {"language": "Go"}}).json()
    assert got["messages"][0]["content"]["text"] == "Please review this Go code."


def test_the_bearer_token_is_sent_and_required(alice_api, bearer_server):
    good = configure(alice_api, name="with token", url=bearer_server.url, auth_type="bearer", bearer_token=TOKEN)
    assert call(alice_api, good, "echo", {"text": "in"}).json()["content"][0]["text"] == "in"
    bad = configure(alice_api, name="wrong token", url=bearer_server.url, auth_type="bearer", bearer_token="wrong")
    response = call(alice_api, bad, "echo", {"text": "in"})
    assert response.status_code == 502
    assert error_of(response)["code"] == "upstream_unauthorized"  # told apart from a failing server
    assert TOKEN not in response.content.decode() and "wrong" not in response.content.decode()


def test_the_test_endpoint_reports_the_server(alice_api, http_server):
    configuration = configure(alice_api, url=http_server.url)
    body = alice_api.post(f"/api/v1/mcp/configurations/{configuration['id']}/test/").json()
    assert body["ok"] is True and body["tool_count"] >= 8
    assert body["server_info"]["name"] == "test-server" and body["latency_ms"] > 0


def test_the_test_endpoint_reports_an_unreachable_server(alice_api, own_server):
    configuration = configure(alice_api, url=own_server.url)
    own_server.stop()
    body = alice_api.post(f"/api/v1/mcp/configurations/{configuration['id']}/test/").json()
    assert body["ok"] is False and body["error"]["code"] == "upstream_error"


def test_a_stdio_server_runs_from_its_template(alice_api, test_template):
    configuration = configure(
        alice_api, transport="stdio", stdio_template="test-server", stdio_arguments={"env": {"GREETING": "hi"}}
    )
    assert call(alice_api, configuration, "echo", {"text": "over stdio"}).json()["content"][0]["text"] == "over stdio"
    assert call(alice_api, configuration, "environment", {"name": "GREETING"}).json()["content"][0]["text"] == "hi"
    # A clean environment: nothing of the platform's own leaks into the server.
    for name in ("DATABASE_URL", "FIELD_ENCRYPTION_KEYS", "REDIS_URL", "SECRET_KEY", "DJANGO_SETTINGS_MODULE"):
        assert call(alice_api, configuration, "environment", {"name": name}).json()["content"][0]["text"] == ""
    workdir = call(alice_api, configuration, "where").json()["content"][0]["text"]
    assert "mcp-stdio-" in workdir


def test_mcp_server_time_from_pypi_over_stdio(alice_api, time_template):
    configuration = configure(
        alice_api, transport="stdio", stdio_template="time", stdio_arguments={"arguments": {"--local-timezone": "UTC"}}
    )
    tools = alice_api.get(f"/api/v1/mcp/configurations/{configuration['id']}/tools/").json()["tools"]
    assert {"get_current_time", "convert_time"} <= {t["name"] for t in tools}
    body = call(alice_api, configuration, "get_current_time", {"timezone": "Europe/Paris"}).json()
    assert body["is_error"] is False
    assert "Europe/Paris" in body["content"][0]["text"]


def test_every_call_is_audited_without_its_arguments(alice_api, http_server, acme):
    from audit.models import AuditEvent

    configuration = configure(alice_api, url=http_server.url)
    call(alice_api, configuration, "echo", {"text": "top secret argument"})
    with scoping.organization_scope(acme):
        event = AuditEvent.objects.filter(action="mcp.tool.call").get()
        assert MCPConfiguration.objects.filter(pk=configuration["id"]).exists()
    assert event.outcome == "success" and event.details["tool"] == "echo"
    assert event.target_id == str(configuration["id"])
    assert "top secret" not in str(event.details)


def test_calls_are_measured_by_configuration_and_outcome(alice_api, http_server, client):
    configuration = configure(alice_api, url=http_server.url)
    call(alice_api, configuration, "echo", {"text": "counted"})
    call(alice_api, configuration, "fail")
    metrics = client.get("/metrics").content.decode()
    label = f'configuration="{configuration["id"]}",method="tools/call",outcome="success"'
    assert f"agentapi_mcp_calls_total{{{label}}} 2.0" in metrics
    assert f"agentapi_mcp_call_duration_seconds_count{{{label}}} 2.0" in metrics
    assert f'agentapi_mcp_handshakes_total{{configuration="{configuration["id"]}"}} 1.0' in metrics
    assert "agentapi_mcp_pool_sessions 1.0" in metrics


def test_the_legacy_sse_transport_works_with_a_bearer_token(alice_api, sse_server):
    configuration = configure(alice_api, transport="sse", url=sse_server.url, auth_type="bearer", bearer_token=TOKEN)
    assert call(alice_api, configuration, "add", {"a": 20, "b": 22}).json()["structured_content"] == {"sum": 42}
    tools = alice_api.get(f"/api/v1/mcp/configurations/{configuration['id']}/tools/").json()["tools"]
    assert "media" in {tool["name"] for tool in tools}


def test_the_request_id_travels_to_the_server(alice_api, own_server):
    configuration = configure(alice_api, url=own_server.url)
    response = alice_api.post(
        f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/",
        {"name": "echo", "arguments": {"text": "traced"}},
        **{"X-Request-ID": "trace-me-123"},
    )
    assert response.status_code == 200 and response["X-Request-ID"] == "trace-me-123"
    assert own_server.stats()["last_request_id"] == "trace-me-123"
