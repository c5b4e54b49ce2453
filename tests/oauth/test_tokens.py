"""The token lifecycle against the real authorization server: refresh with rotation, on demand and
forced; invalid_grant -> needs_reauth; revocation at the provider; an MCP server that demands
OAuth reached with the connected user's token; and provider quirks (a GitHub double)."""

import datetime
import json
import socket

from django.test import Client
from django.utils import timezone

from audit.models import AuditEvent
from oauth import services
from oauth.models import OAuthProvider, OAuthToken
from tenants import scoping
from tests.conftest import committed, error_of
from tests.oauth.conftest import connect, make_provider
from tests.oauth.doubles import serve_json


def connected_token(api, server, organization) -> OAuthToken:
    provider = make_provider(api, server)
    connect(api, Client(), provider=provider["id"])
    with scoping.organization_scope(organization):
        return OAuthToken.objects.select_related("provider").get()


def expire(token: OAuthToken) -> None:
    with scoping.organization_scope(token.organization):
        OAuthToken.objects.filter(pk=token.pk).update(expires_at=timezone.now() - datetime.timedelta(seconds=5))


def test_a_forced_refresh_rotates_the_refresh_token_and_never_reuses_it(alice_api, oauth_server, acme):
    token = connected_token(alice_api, oauth_server, acme)
    old_access, old_refresh = token.access_token(), token.refresh_token()
    response = alice_api.post(f"/api/v1/oauth/tokens/{token.pk}/refresh/")
    assert response.status_code == 200 and response.json()["status"] == "active"
    with scoping.organization_scope(acme):
        token.refresh_from_db()
        assert AuditEvent.objects.filter(action="oauth.token.refresh", details__rotated=True).exists()
    assert token.access_token() != old_access and token.refresh_token() != old_refresh
    assert oauth_server.stats()["token:refresh_token"] == 1
    # The old refresh token is dead at the server (rotation): had it been sent again, the grant
    # would be lost. A second refresh uses the new one and succeeds.
    alice_api.post(f"/api/v1/oauth/tokens/{token.pk}/refresh/")
    with scoping.organization_scope(acme):
        token.refresh_from_db()
    assert token.status == "active" and oauth_server.stats()["token:refresh_token"] == 2


def test_a_forced_refresh_the_provider_does_not_answer_is_a_502_and_keeps_the_tokens(alice_api, oauth_server, acme):
    token = connected_token(alice_api, oauth_server, acme)
    old_access = token.access_token()
    with socket.socket() as closed:  # a port nothing listens on: the provider is down
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with scoping.organization_scope(acme):
        OAuthProvider.objects.filter(pk=token.provider_id).update(token_endpoint=f"http://127.0.0.1:{port}/token")
    response = alice_api.post(f"/api/v1/oauth/tokens/{token.pk}/refresh/")
    assert response.status_code == 502
    body = response.json()["error"]
    assert body["code"] == "refresh_failed" and body["details"]["error"] == "provider_unreachable"
    assert body["details"]["token"]["status"] == "active" and "access_token" not in json.dumps(body)
    # The failure is on record (the request's transaction was committed, not rolled back).
    with scoping.organization_scope(acme):
        token.refresh_from_db()
        event = AuditEvent.objects.filter(action="oauth.token.refresh").latest("id")
    assert token.status == "active" and token.access_token() == old_access
    assert token.refresh_failures == 1 and token.last_error.startswith("provider_unreachable")
    assert event.outcome == "failure" and event.details["error"] == "provider_unreachable"


def test_an_expired_token_is_refreshed_on_demand_once(alice_api, oauth_server, acme, alice):
    token = connected_token(alice_api, oauth_server, acme)
    expire(token)
    with scoping.organization_scope(acme):
        first, _ = services.access_token_for(user_id=alice.user_id, provider=token.provider)
        second, _ = services.access_token_for(user_id=alice.user_id, provider=token.provider)
    assert first == second != token.access_token()
    assert oauth_server.stats()["token:refresh_token"] == 1


def test_invalid_grant_marks_the_connection_for_reauthorization(alice_api, oauth_server, acme, alice):
    token = connected_token(alice_api, oauth_server, acme)
    with scoping.organization_scope(acme):
        token.set_tokens(access_token=token.access_token(), refresh_token="a-refresh-token-the-server-never-issued")
        token.save()
    expire(token)
    with scoping.organization_scope(acme):
        try:
            services.access_token_for(user_id=alice.user_id, provider=token.provider)
            raised = None
        except services.ConnectionNeeded as exc:
            raised = exc
        token.refresh_from_db()
        event = AuditEvent.objects.get(action="oauth.token.needs_reauth")
    assert raised is not None and raised.error_code == "oauth_reauthorization_required"
    assert raised.details == {"provider": token.provider_id, "connection": token.pk}
    assert token.status == "needs_reauth" and token.last_error.startswith("invalid_grant")
    assert event.outcome == "failure"
    assert alice_api.get(f"/api/v1/oauth/tokens/{token.pk}/").json()["status"] == "needs_reauth"
    # Connecting again makes it active again.
    connect(alice_api, Client(), provider=token.provider_id)
    with scoping.organization_scope(acme):
        token.refresh_from_db()
    assert token.status == "active"


def test_revoking_revokes_at_the_provider_then_erases_locally(alice_api, oauth_server, acme):
    token = connected_token(alice_api, oauth_server, acme)
    assert alice_api.delete(f"/api/v1/oauth/tokens/{token.pk}/").status_code == 204
    assert oauth_server.stats()["revoke:request"] == 2  # the refresh token, then the access token
    with scoping.organization_scope(acme):
        token.refresh_from_db()
        event = AuditEvent.objects.get(action="oauth.token.revoke")
    assert token.status == "revoked" and token.access_token_sealed == token.refresh_token_sealed == ""
    assert event.details["at_provider"] == "revoked"


def test_another_users_connection_is_not_found(alice_api, bob_api, oauth_server, acme):
    token = connected_token(alice_api, oauth_server, acme)
    assert bob_api.get(f"/api/v1/oauth/tokens/{token.pk}/").status_code == 404
    assert bob_api.delete(f"/api/v1/oauth/tokens/{token.pk}/").status_code == 404
    assert bob_api.get("/api/v1/oauth/tokens/").json()["results"] == []


@committed  # through the data plane: it reads committed rows
def test_an_mcp_server_that_demands_oauth_is_reached_with_the_users_token(alice_api, bob_api, oauth_server, acme):
    created = alice_api.post(
        "/api/v1/mcp/configurations/", {"name": "guarded", "url": oauth_server.url, "auth_type": "oauth"}
    )
    assert created.status_code == 201, created.content
    configuration = created.json()
    call = f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/"
    before = alice_api.post(call, {"name": "echo", "arguments": {"text": "x"}})
    assert before.status_code == 409 and error_of(before)["code"] == "oauth_connection_required"
    # Discovery (401 -> RFC 9728 -> RFC 8414), dynamic registration (RFC 7591), then the flow,
    # with the resource indicator (RFC 8707).
    connect(alice_api, Client(), mcp_configuration=configuration["id"])
    stats = oauth_server.stats()
    assert stats["register:request"] == 1 and stats["token:authorization_code"] == 1
    response = alice_api.post(call, {"name": "echo", "arguments": {"text": "with my token"}})
    assert response.status_code == 200, response.content
    assert response.json()["content"][0]["text"] == "with my token"
    tools = alice_api.get(f"/api/v1/mcp/configurations/{configuration['id']}/tools/")
    assert tools.status_code == 200 and tools.json()["count"] >= 8
    # Bob has not connected: his call is refused, and alice's token is never used for him.
    refused = bob_api.post(call, {"name": "echo", "arguments": {"text": "x"}})
    assert refused.status_code == 409 and error_of(refused)["code"] == "oauth_connection_required"


def test_github_quirks_form_encoded_no_expiry_and_no_new_refresh_token(alice_api, acme, alice):
    # A double of GitHub's token endpoint (GitHub itself cannot run here): form-encoded unless
    # asked for JSON, no expires_in, and a refresh answer without a new refresh token.
    issued = iter(["gho_first", "gho_second"])

    def token(form, headers):
        body = {"access_token": next(issued), "token_type": "bearer", "scope": "read:user,repo"}
        if form.get("grant_type") == "authorization_code":
            body["refresh_token"] = "ghr_only"
        if "application/json" in headers.get("Accept", ""):
            return 200, "application/json", json.dumps(body).encode()
        return 200, "application/x-www-form-urlencoded", "&".join(f"{k}={v}" for k, v in body.items()).encode()

    with serve_json({"/login/oauth/access_token": token}) as base:
        provider = alice_api.post("/api/v1/oauth/providers/", {
            "name": "github-double", "kind": "oauth2", "client_id": "Iv1.x", "client_secret": "s",
            "authorization_endpoint": f"{base}/login/oauth/authorize", "token_endpoint": f"{base}/login/oauth/access_token",
        }).json()  # fmt: skip
        started = alice_api.post("/api/v1/oauth/authorize/", {"provider": provider["id"]}).json()
        page = Client().get("/oauth/callback/", {"state": started["state"], "code": "c0de"})
        assert page.status_code == 200, page.content.decode()
        with scoping.organization_scope(acme):
            stored = OAuthToken.objects.get()
            assert stored.expires_at is None and stored.scopes == ["read:user", "repo"]
            refreshed = services.refresh(token=stored, reason="test", force=True)
        assert refreshed.access_token() == "gho_second" and refreshed.refresh_token() == "ghr_only"
        assert all(headers.get("Accept") == "application/json" for _, _, headers in serve_json.calls)


@committed  # through the data plane: it reads committed rows
def test_a_token_the_server_refuses_is_refreshed_once_and_the_call_goes_through(alice_api, oauth_server, acme):
    configuration = alice_api.post(
        "/api/v1/mcp/configurations/", {"name": "guarded", "url": oauth_server.url, "auth_type": "oauth"}
    ).json()
    connect(alice_api, Client(), mcp_configuration=configuration["id"])
    with scoping.organization_scope(acme):
        token = OAuthToken.objects.get()
        token.set_tokens(access_token="an-access-token-the-server-never-issued", refresh_token=None)
        token.save()
    response = alice_api.post(
        f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/",
        {"name": "echo", "arguments": {"text": "renewed"}},
    )
    assert response.status_code == 200, response.content
    assert response.json()["content"][0]["text"] == "renewed"
    assert oauth_server.stats()["token:refresh_token"] == 1


@committed  # through the data plane: it reads committed rows
def test_a_token_revoked_at_the_provider_asks_the_user_to_connect_again(alice_api, oauth_server, acme):
    import httpx

    configuration = alice_api.post(
        "/api/v1/mcp/configurations/", {"name": "guarded", "url": oauth_server.url, "auth_type": "oauth"}
    ).json()
    connect(alice_api, Client(), mcp_configuration=configuration["id"])
    call = f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/"
    assert alice_api.post(call, {"name": "echo", "arguments": {"text": "before"}}).status_code == 200
    with scoping.organization_scope(acme):
        token = OAuthToken.objects.select_related("provider").get()
        form = {
            "token": token.access_token(),
            "client_id": token.provider.client_id,
            "client_secret": token.provider.client_secret(),
        }
    assert (
        httpx.post(f"{oauth_server.base}/revoke", data=form, timeout=10).status_code == 200
    )  # revoked behind our back
    response = alice_api.post(call, {"name": "echo", "arguments": {"text": "after"}})
    assert response.status_code == 409 and error_of(response)["code"] == "oauth_reauthorization_required"
    assert error_of(response)["details"]["connection"] == token.pk
    with scoping.organization_scope(acme):
        token.refresh_from_db()
    assert token.status == "needs_reauth"
