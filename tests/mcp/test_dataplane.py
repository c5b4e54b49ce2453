"""The data plane: tool calls, resource reads and prompt gets served natively on the event loop keep
every guarantee of the management API (authentication, scope, 404 across organizations, the error
shape, request ids, bad bodies, audit), and what it acknowledges is in PostgreSQL whatever dies."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from audit import chain
from audit.models import AuditEvent
from audit.sequencer import audit_chain_extend
from tenants import scoping
from tenants.models import APIKey
from tests.conftest import Api, committed, error_of, make_key
from tests.mcp.conftest import configure
from tests.tenants.test_jwt import idp  # noqa: F401 (a fixture)

pytestmark = committed
ROOT = Path(__file__).resolve().parents[2]
ROUTES = [("tools/call", {"name": "echo", "arguments": {"text": "x"}}), ("resources/read", {"uri": "test://greeting"}),
          ("prompts/get", {"name": "review", "arguments": {"language": "Go"}})]  # fmt: skip


def events(organization, action: str) -> list[AuditEvent]:
    with scoping.organization_scope(organization):
        return list(AuditEvent.objects.filter(action=action).order_by("id"))


@pytest.mark.parametrize("route, body", ROUTES)
def test_it_answers_every_route_through_the_data_plane(alice_api, http_server, route, body):
    configuration = configure(alice_api, url=http_server.url)
    response = alice_api.post(f"/api/v1/mcp/configurations/{configuration['id']}/{route}/", body)
    assert response.status_code == 200, response.content
    assert type(response).__name__ == "DataPlaneResponse"  # not the DRF view
    assert response.json()["configuration"] == configuration["id"]


def test_it_refuses_missing_unknown_revoked_and_misplaced_credentials(alice, alice_api, http_server, acme):
    configuration = configure(alice_api, url=http_server.url)
    path = f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/"
    body = {"name": "echo", "arguments": {"text": "x"}}
    missing = Api().post(path, body)
    assert missing.status_code == 401 and error_of(missing)["code"] == "not_authenticated"
    assert missing["WWW-Authenticate"] == 'Bearer realm="agentapi"'
    unknown = Api("aak_000000000000_" + "x" * 43).post(path, body)
    assert unknown.status_code == 401 and error_of(unknown)["code"] == "invalid_api_key"
    assert 'error="invalid_token"' in unknown["WWW-Authenticate"]
    revoked_key = make_key(alice, "revoked")
    with scoping.organization_scope(acme):
        APIKey.objects.filter(name="revoked").update(revoked_at="2026-01-01T00:00:00Z")
    revoked = Api(revoked_key).post(path, body)
    assert revoked.status_code == 401 and error_of(revoked)["code"] == "api_key_revoked"
    in_query = alice_api.post(path + "?api_key=x", body)
    assert in_query.status_code == 401 and error_of(in_query)["code"] == "credentials_in_query"
    malformed = Api().post(path, body, Authorization="Bearer a b")
    assert malformed.status_code == 401 and error_of(malformed)["code"] == "malformed_credentials"
    # Recorded like the management plane's refusals, the refused key's organization included.
    reasons = [e.details["reason"] for e in events(acme, "tenants.authentication.fail")]
    assert "api_key_revoked" in reasons
    with scoping.dangerously_all_organizations(reason="test", record=False):
        failed = AuditEvent.objects.filter(action="tenants.authentication.fail")
        assert {"invalid_api_key", "credentials_in_query", "api_key_revoked"} <= set(
            failed.values_list("details__reason", flat=True)
        )


def test_it_accepts_a_jwt_from_the_identity_provider(idp, alice, alice_api, http_server):  # noqa: F811
    configuration = configure(alice_api, url=http_server.url)
    path = f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/"
    response = Api(idp.token()).post(path, {"name": "echo", "arguments": {"text": "jwt"}})
    assert response.status_code == 200, response.content
    assert response.json()["content"][0]["text"] == "jwt"
    expired = Api(idp.token(exp=1_000_000)).post(path, {"name": "echo", "arguments": {}})
    assert expired.status_code == 401 and error_of(expired)["code"] == "token_expired"


@pytest.mark.parametrize("route, body", ROUTES)
def test_another_organizations_configuration_is_404_whatever_the_body(
    alice_api, charlie_api, http_server, acme, globex, route, body
):
    configuration = configure(alice_api, url=http_server.url)
    path = f"/api/v1/mcp/configurations/{configuration['id']}/{route}/"
    for sent in (body, {}, "{not json", {"deep": json.loads("[" * 300 + "]" * 300)}):
        response = charlie_api.post(path, sent)
        assert response.status_code == 404, (sent, response.content)
        assert error_of(response)["code"] == "not_found"
    missing = charlie_api.post(f"/api/v1/mcp/configurations/{2**63}/{route}/", body)
    assert missing.status_code == 404
    with scoping.dangerously_all_organizations(reason="test", record=False):
        denied = AuditEvent.objects.filter(action="tenants.cross_organization.deny")
        assert denied.filter(details__caller_organization=globex.pk, details__target_organization=acme.pk).exists()


def test_a_members_own_server_is_404_to_another_member(alice_api, bob_api, http_server):
    own = configure(bob_api, url=http_server.url, shared=False)
    body = {"name": "echo", "arguments": {"text": "mine"}}
    assert alice_api.post(f"/api/v1/mcp/configurations/{own['id']}/tools/call/", body).status_code == 404
    assert bob_api.post(f"/api/v1/mcp/configurations/{own['id']}/tools/call/", body).status_code == 200


@pytest.mark.parametrize(
    "body, status, code",
    [
        ("[" * 500 + "]" * 500, 400, "malformed_request"),
        (
            json.dumps({"name": "echo", "arguments": json.loads('{"a":' * 70 + "1" + "}" * 70)}),
            400,
            "malformed_request",
        ),
        ("{not json", 400, "malformed_request"),
        (json.dumps({"name": "echo\u0000"}), 400, "malformed_request"),
        (json.dumps({"name": "echo", "arguments": {f"k{i}": i for i in range(50_000)}}), 200, None),
        (json.dumps({"name": ["echo"]}), 400, "invalid"),
        (json.dumps([1, 2]), 400, "invalid"),
    ],
)
def test_bad_bodies_are_clear_400s(alice_api, http_server, body, status, code):
    configuration = configure(alice_api, url=http_server.url)
    response = alice_api.post(f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/", body)
    assert response.status_code == status, response.content[:300]
    if code:
        assert error_of(response)["code"] == code


def test_a_body_over_the_limit_is_a_413_naming_it(alice_api, http_server, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    configuration = configure(alice_api, url=http_server.url)
    response = alice_api.post(
        f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/",
        {"name": "echo", "arguments": {"text": "x" * 2000}},
    )
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "request_too_large" and "1000 bytes" in error["message"]


def test_a_result_over_the_limit_is_a_502_and_is_audited(alice_api, http_server, settings, acme):
    settings.MCP_MAX_RESULT_BYTES = 100
    configuration = configure(alice_api, url=http_server.url)
    response = alice_api.post(
        f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/",
        {"name": "echo", "arguments": {"text": "y" * 500}},
    )
    assert response.status_code == 502 and error_of(response)["code"] == "upstream_result_too_large"
    assert "y" * 500 not in response.content.decode()
    assert events(acme, "mcp.tool.call")[-1].details["error"] == "upstream_result_too_large"


def test_the_answer_carries_the_request_id_and_the_security_headers(alice_api, http_server):
    configuration = configure(alice_api, url=http_server.url)
    response = alice_api.post(
        f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/",
        {"name": "echo", "arguments": {"text": "x"}},
        **{"X-Request-ID": "req-dataplane-1"},
    )
    assert response["X-Request-ID"] == "req-dataplane-1"
    assert response["X-Content-Type-Options"] == "nosniff" and response["Content-Type"] == "application/json"


def test_each_call_is_one_unchained_insert_that_the_sequencer_chains(alice_api, http_server, acme):
    configuration = configure(alice_api, url=http_server.url)
    alice_api.post(
        f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/",
        {"name": "echo", "arguments": {"text": "secret argument"}},
        **{"X-Request-ID": "req-audited"},
    )
    (event,) = [e for e in events(acme, "mcp.tool.call") if e.request_id == "req-audited"]
    assert event.hash is None and event.seq is None
    assert event.details["tool"] == "echo" and "secret argument" not in json.dumps(event.details)
    assert event.actor_label == "alice@acme.test" and event.outcome == "success"
    audit_chain_extend()
    with scoping.organization_scope(acme):
        event.refresh_from_db()
        assert event.hash and chain.verify(acme.pk)[1] is None


def test_an_event_answered_for_survives_the_web_process_being_killed(alice, alice_api, http_server, acme):
    """A real web process (uvicorn, the ASGI application): killed right after it answered, the
    call's event is in PostgreSQL and the sequencer chains it."""
    configuration = configure(alice_api, url=http_server.url)
    key = make_key(alice, "killed")
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "agentapi.settings.test", "OUTBOUND_ALLOWED_NETWORKS": "127.0.0.0/8",
           "ALLOWED_HOSTS": "127.0.0.1"}  # fmt: skip
    from tests.services import free_port

    port = free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "agentapi.asgi:application", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/v1/mcp/configurations/{configuration['id']}/tools/call/",
            data=json.dumps({"name": "echo", "arguments": {"text": "then die"}}).encode(),
            headers={
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
                "X-Request-ID": "req-killed",
            },
        )
        while True:
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    assert json.load(response)["content"][0]["text"] == "then die"
                break
            except (ConnectionError, urllib.error.URLError):
                assert time.monotonic() < deadline and web.poll() is None, web.stderr.read()
                time.sleep(0.2)
        web.send_signal(signal.SIGKILL)
    finally:
        web.kill()
        web.wait(10)
    (event,) = [e for e in events(acme, "mcp.tool.call") if e.request_id == "req-killed"]
    assert event.outcome == "success"
    audit_chain_extend()
    with scoping.organization_scope(acme):
        event.refresh_from_db()
        assert event.hash is not None and chain.verify(acme.pk)[1] is None


def test_the_embedded_profile_serves_the_same_routes_on_the_management_plane(alice_api, http_server, settings):
    from agentapi import dataplane

    settings.DATA_PLANE_ENABLED = False
    assert not dataplane.enabled()
    configuration = configure(alice_api, url=http_server.url)
    response = alice_api.post(
        f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/", {"name": "echo", "arguments": {"text": "x"}}
    )
    assert response.status_code == 200 and type(response).__name__ != "DataPlaneResponse"
    assert response.json()["content"][0]["text"] == "x"


def test_kept_credentials_do_not_outlive_their_time(alice_api, http_server, settings):
    from mcp import dataplane as mcp_dataplane

    settings.DATA_KEY_CACHE_SECONDS = 0.2
    first = configure(alice_api, name="first", url=http_server.url)
    second = configure(alice_api, name="second", url=http_server.url)
    body = {"name": "echo", "arguments": {"text": "x"}}
    assert alice_api.post(f"/api/v1/mcp/configurations/{first['id']}/tools/call/", body).status_code == 200
    assert any(key[0] == first["id"] for key in mcp_dataplane._targets)
    time.sleep(0.3)
    assert alice_api.post(f"/api/v1/mcp/configurations/{second['id']}/tools/call/", body).status_code == 200
    assert not any(key[0] == first["id"] for key in mcp_dataplane._targets)  # expired, dropped
