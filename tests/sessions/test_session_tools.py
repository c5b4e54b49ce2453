"""A session's tools, resources and prompts through the REST API, on real MCP servers (the fastmcp test
server twice, one with names models refuse): names, stability, calls with the session named in
the audit log, and who may use them."""

import re

import pytest

from audit.models import AuditEvent
from tenants import scoping
from tests.conftest import committed, error_of
from tests.mcp.conftest import RunningServer, configure

pytestmark = committed
SESSIONS = "/api/v1/sessions/"


@pytest.fixture(scope="module")
def odd_server():
    server = RunningServer("--odd-names")
    yield server
    server.stop()


def open_session(api, *configurations, **fields) -> dict:
    response = api.post(SESSIONS, {"mcp_configurations": list(configurations), **fields})
    assert response.status_code == 201, response.content
    return response.json()


def test_tools_are_named_by_server_fit_model_limits_and_are_unique(alice_api, http_server, odd_server):
    plain = configure(alice_api, name="Test server", url=http_server.url)
    odd = configure(alice_api, name="Test server!", url=odd_server.url)  # cleans to the same prefix
    session = open_session(alice_api, plain["id"], odd["id"])
    response = alice_api.get(f"{SESSIONS}{session['id']}/tools/")
    assert response.status_code == 200, response.content
    body = response.json()
    names = [tool["name"] for tool in body["tools"]]
    assert body["count"] == len(names) == len(set(names)) and body["unavailable"] == []
    assert all(re.match(r"^[A-Za-z0-9_-]{1,64}$", name) for name in names), names
    by_upstream = {(tool["configuration"], tool["tool"]): tool for tool in body["tools"]}
    assert by_upstream[(plain["id"], "echo")]["name"] == "Test_server__echo"
    assert by_upstream[(odd["id"], "echo")]["name"] == "Test_server_2__echo"
    assert by_upstream[(odd["id"], "lookup_record_v2")]["name"] == "Test_server_2__lookup_record_v2"
    odd_name = by_upstream[(odd["id"], "lookup.record/v2")]["name"]
    assert odd_name.startswith("Test_server_2__lookup_record_v2_") and len(odd_name) <= 64
    echo = by_upstream[(plain["id"], "echo")]
    assert echo["description"] == "Echo the text back." and echo["input_schema"]["properties"]["text"]


def test_a_call_by_session_name_reaches_the_right_server_and_is_audited_with_the_session(
    alice_api, http_server, odd_server, acme
):
    plain = configure(alice_api, name="plain", url=http_server.url)
    odd = configure(alice_api, name="odd", url=odd_server.url)
    session = open_session(alice_api, plain["id"], odd["id"])
    tools = {tool["tool"]: tool["name"] for tool in alice_api.get(f"{SESSIONS}{session['id']}/tools/").json()["tools"]
             if tool["configuration"] == odd["id"]}  # fmt: skip
    for upstream in ("echo", "lookup.record/v2", "summarise_" + "the_quarterly_figures_" * 3):
        response = alice_api.post(
            f"{SESSIONS}{session['id']}/tools/call/", {"name": tools[upstream], "arguments": {"text": upstream}}
        )
        assert response.status_code == 200, response.content
        result = response.json()
        assert result["content"][0]["text"] == upstream and result["configuration"] == odd["id"]
        assert result["name"] == tools[upstream]
    with scoping.organization_scope(acme):
        calls = list(AuditEvent.objects.filter(action="mcp.tool.call").order_by("id"))
    assert [e.details["tool"] for e in calls] == [
        "echo",
        "lookup.record/v2",
        "summarise_" + "the_quarterly_figures_" * 3,
    ]
    assert {e.details["session"] for e in calls} == {session["id"]} and {e.target_id for e in calls} == {str(odd["id"])}
    # A name under a server's prefix goes to that server, which says whether it has such a tool.
    unknown = alice_api.post(f"{SESSIONS}{session['id']}/tools/call/", {"name": "odd__nothing", "arguments": {}})
    assert unknown.status_code == 200 and unknown.json()["is_error"] is True
    assert unknown.json()["configuration"] == odd["id"]
    no_server = alice_api.post(f"{SESSIONS}{session['id']}/tools/call/", {"name": "gone__echo", "arguments": {}})
    assert no_server.status_code == 404 and error_of(no_server)["code"] == "tool_not_found"
    no_prefix = alice_api.post(f"{SESSIONS}{session['id']}/tools/call/", {"name": "echo", "arguments": {}})
    assert no_prefix.status_code == 404 and error_of(no_prefix)["code"] == "tool_not_found"


def test_attaching_another_server_renames_nothing(alice_api, http_server, odd_server):
    first = configure(alice_api, name="files", url=http_server.url)
    second = configure(alice_api, name="files.", url=odd_server.url)
    alone = open_session(alice_api, first["id"])
    both = open_session(alice_api, first["id"], second["id"])
    before = {t["tool"]: t["name"] for t in alice_api.get(f"{SESSIONS}{alone['id']}/tools/").json()["tools"]}
    after = {
        t["tool"]: t["name"]
        for t in alice_api.get(f"{SESSIONS}{both['id']}/tools/").json()["tools"]
        if t["configuration"] == first["id"]
    }
    assert before == after and before["echo"] == "files__echo"


def test_resources_and_prompts_of_two_servers_are_kept_apart(alice_api, http_server, odd_server):
    one = configure(alice_api, name="one", url=http_server.url)
    two = configure(alice_api, name="two", url=odd_server.url)
    session = open_session(alice_api, one["id"], two["id"])
    resources = alice_api.get(f"{SESSIONS}{session['id']}/resources/").json()["resources"]
    greetings = [r for r in resources if r["resource"] == "test://greeting"]
    assert {r["configuration"] for r in greetings} == {one["id"], two["id"]}
    assert len({r["uri"] for r in greetings}) == 2
    for resource in greetings:
        read = alice_api.post(f"{SESSIONS}{session['id']}/resources/read/", {"uri": resource["uri"]})
        assert read.status_code == 200, read.content
        assert read.json()["configuration"] == resource["configuration"] and read.json()["uri"] == resource["uri"]
    foreign = alice_api.post(f"{SESSIONS}{session['id']}/resources/read/", {"uri": "test://greeting"})
    assert foreign.status_code == 404 and error_of(foreign)["code"] == "resource_not_found"
    prompts = alice_api.get(f"{SESSIONS}{session['id']}/prompts/").json()["prompts"]
    assert sorted(p["name"] for p in prompts) == ["one__review", "two__review"]
    got = alice_api.post(
        f"{SESSIONS}{session['id']}/prompts/get/", {"name": "two__review", "arguments": {"language": "Go"}}
    )
    assert got.status_code == 200, got.content
    assert got.json()["configuration"] == two["id"] and "Go" in str(got.json()["messages"])


def test_only_the_sessions_own_user_uses_its_tools_and_an_ended_session_has_none(
    alice_api, bob_api, charlie_api, http_server
):
    shared = configure(alice_api, name="shared", url=http_server.url)
    session = open_session(bob_api, shared["id"])
    path = f"{SESSIONS}{session['id']}/tools/"
    assert bob_api.get(path).status_code == 200
    for other in (alice_api, charlie_api):  # the owner of bob's organization, and another organization
        assert other.get(path).status_code == 404
        response = other.post(f"{path}call/", {"name": "shared__echo", "arguments": {"text": "x"}})
        assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    assert bob_api.delete(f"{SESSIONS}{session['id']}/").status_code == 204
    ended = bob_api.post(f"{path}call/", {"name": "shared__echo", "arguments": {"text": "x"}})
    assert ended.status_code == 409 and error_of(ended)["code"] == "session_not_active"
    assert bob_api.get(path).status_code == 409


def test_a_server_that_cannot_be_reached_is_reported_and_hides_nothing_else(alice_api, http_server):
    up = configure(alice_api, name="up", url=http_server.url)
    down = configure(alice_api, name="down", url="http://127.0.0.1:9/mcp")
    session = open_session(alice_api, up["id"], down["id"])
    body = alice_api.get(f"{SESSIONS}{session['id']}/tools/").json()
    assert {tool["configuration"] for tool in body["tools"]} == {up["id"]} and body["count"] > 0
    assert [u["configuration"] for u in body["unavailable"]] == [down["id"]]
    assert body["unavailable"][0]["prefix"] == "down" and body["unavailable"][0]["error"]["code"]


def test_the_management_plane_serves_the_same_calls_where_the_data_plane_does_not_run(alice_api, http_server, settings):
    settings.DATA_PLANE_ENABLED = False  # as on the embedded profile (SQLite)
    server = configure(alice_api, name="plain", url=http_server.url)
    session = open_session(alice_api, server["id"])
    called = alice_api.post(
        f"{SESSIONS}{session['id']}/tools/call/", {"name": "plain__echo", "arguments": {"text": "y"}}
    )
    assert called.status_code == 200 and type(called).__name__ != "DataPlaneResponse"
    assert called.json()["content"][0]["text"] == "y" and called.json()["name"] == "plain__echo"
    got = alice_api.post(
        f"{SESSIONS}{session['id']}/prompts/get/", {"name": "plain__review", "arguments": {"language": "C"}}
    )
    assert got.status_code == 200, got.content


def test_a_withheld_tool_is_neither_listed_nor_called_through_the_session_then_is_once_approved(alice_api, acme):
    from tenants import services

    server = RunningServer()
    try:
        services.organization_update(organization=acme, settings={**acme.settings, "withhold_changed_tools": True})
        configuration = configure(alice_api, name="own", url=server.url)
        session = open_session(alice_api, configuration["id"])
        path = f"{SESSIONS}{session['id']}"
        assert "own__echo" in [t["name"] for t in alice_api.get(f"{path}/tools/").json()["tools"]]
        server.mutate()
        alice_api.get(f"/api/v1/mcp/configurations/{configuration['id']}/tools/?refresh=true")  # sees the change
        mcp = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18",
               "Authorization": f"Bearer {session['mcp_token']}"}  # fmt: skip
        request = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        for names in (
            [t["name"] for t in alice_api.get(f"{path}/tools/").json()["tools"]],
            [t["name"] for t in alice_api.request("post", f"/mcp/sessions/{session['id']}/", request, **mcp).json()["result"]["tools"]],
        ):  # fmt: skip
            assert "own__echo" not in names and "own__add" in names
        refused = alice_api.post(f"{path}/tools/call/", {"name": "own__echo", "arguments": {"text": "x"}})
        assert refused.status_code == 409 and error_of(refused)["code"] == "tool_pending_approval"
        assert (
            alice_api.post(
                f"/api/v1/mcp/configurations/{configuration['id']}/pins/approve/", {"name": "echo"}
            ).status_code
            == 200
        )
        listed = alice_api.request("post", f"/mcp/sessions/{session['id']}/", request, **mcp).json()["result"]["tools"]
        assert "own__echo" in [t["name"] for t in listed]  # at once: withheld tools come fresh every request
    finally:
        server.stop()
