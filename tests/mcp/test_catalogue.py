"""The tool catalogue: cached in Redis and invalidated on change, filtered by allowed_tools, and
pinned: a changed tool definition is recorded, audited and, where asked for, withheld."""

from audit.models import AuditEvent
from tenants import scoping, services
from tests.conftest import committed, error_of
from tests.mcp.conftest import configure

# The calls go through the data plane, which reads committed rows on its own connections.
pytestmark = committed


def tools_of(api, configuration, **params):
    response = api.get(f"/api/v1/mcp/configurations/{configuration['id']}/tools/", params)
    assert response.status_code == 200, response.content
    return {tool["name"]: tool for tool in response.json()["tools"]}


def test_the_catalogue_is_cached_until_the_configuration_changes(alice_api, own_server, client):
    configuration = configure(alice_api, url=own_server.url)
    listed = tools_of(alice_api, configuration)
    assert {"echo", "add", "media"} <= set(listed)
    assert listed["add"]["inputSchema"]["properties"].keys() == {"a", "b"}
    lists = own_server.stats()["tools/list"]
    tools_of(alice_api, configuration)
    tools_of(alice_api, configuration)
    assert own_server.stats()["tools/list"] == lists  # served from the cache
    tools_of(alice_api, configuration, refresh="true")
    assert own_server.stats()["tools/list"] == lists + 1
    alice_api.patch(f"/api/v1/mcp/configurations/{configuration['id']}/", {"url": own_server.url + "/"})
    tools_of(alice_api, configuration)
    assert own_server.stats()["tools/list"] > lists + 1  # a changed configuration misses (new session)
    metrics = client.get("/metrics").content.decode()
    assert 'agentapi_mcp_catalogue_requests_total{result="hit"}' in metrics


def test_allowed_tools_limit_what_is_seen_and_called(alice_api, http_server, acme):
    configuration = configure(alice_api, url=http_server.url, allowed_tools=["echo"])
    assert set(tools_of(alice_api, configuration)) == {"echo"}
    response = alice_api.post(
        f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/", {"name": "add", "arguments": {"a": 1, "b": 2}}
    )
    assert response.status_code == 403 and error_of(response)["code"] == "tool_not_allowed"
    alice_api.patch(f"/api/v1/mcp/configurations/{configuration['id']}/", {"allowed_tools": None})
    assert "add" in tools_of(alice_api, configuration)  # applied after the cache: at once


def test_a_changed_tool_is_withheld_until_an_admin_approves_it(alice_api, bob_api, own_server, acme):
    services.organization_update(organization=acme, settings={**acme.settings, "withhold_changed_tools": True})
    configuration = configure(alice_api, url=own_server.url)
    original = tools_of(alice_api, configuration)["echo"]["description"]
    own_server.mutate()
    listed = tools_of(alice_api, configuration, refresh="true")
    assert "echo" not in listed and "add" in listed
    base = f"/api/v1/mcp/configurations/{configuration['id']}"
    refused = alice_api.post(f"{base}/tools/call/", {"name": "echo", "arguments": {"text": "x"}})
    assert refused.status_code == 409 and error_of(refused)["code"] == "tool_pending_approval"
    pin = next(p for p in alice_api.get(f"{base}/pins/").json() if p["name"] == "echo")
    assert pin["status"] == "pending" and pin["definition"]["description"] == original
    assert "evil.test" in pin["pending_definition"]["description"]
    with scoping.organization_scope(acme):
        change = AuditEvent.objects.get(action="mcp.tool.change")
    assert change.details["tool"] == "echo" and change.details["withheld"] is True
    assert bob_api.post(f"{base}/pins/approve/", {"name": "echo"}).status_code == 403  # members do not approve
    approved = alice_api.post(f"{base}/pins/approve/", {"name": "echo"})
    assert approved.status_code == 200 and approved.json()["status"] == "approved"
    assert "evil.test" in tools_of(alice_api, configuration)["echo"]["description"]
    assert alice_api.post(f"{base}/tools/call/", {"name": "echo", "arguments": {"text": "x"}}).status_code == 200


def test_without_withholding_a_change_is_recorded_and_the_tool_stays(alice_api, own_server, acme):
    configuration = configure(alice_api, url=own_server.url)
    tools_of(alice_api, configuration)
    own_server.mutate()
    assert "evil.test" in tools_of(alice_api, configuration, refresh="true")["echo"]["description"]
    with scoping.organization_scope(acme):
        change = AuditEvent.objects.get(action="mcp.tool.change")
    assert change.details["withheld"] is False and change.details["previous_hash"] != change.details["hash"]
