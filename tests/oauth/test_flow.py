"""The connect flow against a real authorization server: PKCE, state binding, expiry and replay,
denied consent, failed exchange; the callback page; connections listed without secrets."""

from urllib.parse import parse_qs, urlsplit

from django.test import Client
from django.utils import timezone

from audit.models import AuditEvent
from oauth.models import AuthorizationFlow, OAuthToken
from tenants import scoping
from tests.conftest import error_of
from tests.oauth.conftest import REDIRECT_URI, connect, consent, make_provider


def test_it_connects_with_pkce_and_stores_the_tokens_sealed(alice_api, oauth_server, acme):
    provider = make_provider(alice_api, oauth_server)
    started = alice_api.post("/api/v1/oauth/authorize/", {"provider": provider["id"]}).json()
    assert set(started) == {"authorization_url", "state", "expires_at"}
    query = parse_qs(urlsplit(started["authorization_url"]).query)
    assert query["code_challenge_method"] == ["S256"] and len(query["code_challenge"][0]) == 43
    assert query["redirect_uri"] == [REDIRECT_URI] and query["state"] == [started["state"]]
    callback = consent(started["authorization_url"])
    page = Client().get("/oauth/callback/", callback)
    assert page.status_code == 200 and "Connected" in page.content.decode(), page.content.decode()
    assert "agentapi.oauth" in page.content.decode()  # tells the opener window
    with scoping.organization_scope(acme):
        token = OAuthToken.objects.get()
        assert AuditEvent.objects.filter(action="oauth.token.create", outcome="success").exists()
    assert token.access_token().startswith("test_access_token_") and token.refresh_token().startswith(
        "test_refresh_token_"
    )
    assert token.access_token_sealed.startswith("e1:") and "test_access" not in token.access_token_sealed
    assert token.expires_at > timezone.now()
    listed = alice_api.get("/api/v1/oauth/tokens/").json()["results"]
    assert [c["status"] for c in listed] == ["active"] and "test_access" not in str(listed)
    assert oauth_server.stats()["token:authorization_code"] == 1


def test_a_state_is_single_use(alice_api, oauth_server, acme):
    provider = make_provider(alice_api, oauth_server)
    query = connect(alice_api, Client(), provider=provider["id"])
    replay = Client().get("/oauth/callback/", query)
    assert replay.status_code == 400 and 'data-code="state_replayed"' in replay.content.decode()
    assert oauth_server.stats()["token:authorization_code"] == 1  # the code was not sent again


def test_an_expired_state_is_refused_and_nothing_is_stored(alice_api, oauth_server, acme):
    provider = make_provider(alice_api, oauth_server)
    started = alice_api.post("/api/v1/oauth/authorize/", {"provider": provider["id"]}).json()
    with scoping.organization_scope(acme):
        AuthorizationFlow.objects.update(expires_at=timezone.now() - timezone.timedelta(seconds=1))
    page = Client().get("/oauth/callback/", consent(started["authorization_url"]))
    assert page.status_code == 400 and 'data-code="state_expired"' in page.content.decode()
    with scoping.organization_scope(acme):
        assert not OAuthToken.objects.exists()
        assert AuditEvent.objects.filter(action="oauth.token.create", outcome="failure").exists()


def test_unknown_state_denied_consent_and_a_failed_exchange_store_nothing(alice_api, oauth_server, acme):
    provider = make_provider(alice_api, oauth_server)
    unknown = Client().get("/oauth/callback/", {"state": "made-up", "code": "x"})
    assert unknown.status_code == 400 and 'data-code="unknown_state"' in unknown.content.decode()
    started = alice_api.post("/api/v1/oauth/authorize/", {"provider": provider["id"]}).json()
    denied = Client().get("/oauth/callback/", {"state": started["state"], "error": "access_denied"})
    assert denied.status_code == 400 and 'data-code="access_denied"' in denied.content.decode()
    started = alice_api.post("/api/v1/oauth/authorize/", {"provider": provider["id"]}).json()
    bad_code = Client().get("/oauth/callback/", {"state": started["state"], "code": "not-a-code"})
    assert bad_code.status_code == 400 and 'data-code="exchange_failed"' in bad_code.content.decode()
    with scoping.organization_scope(acme):
        assert not OAuthToken.objects.exists()
        assert AuditEvent.objects.filter(action="oauth.token.create", outcome="failure").count() == 2


def test_a_state_is_bound_to_its_organization(alice_api, charlie_api, oauth_server, acme, globex):
    provider = make_provider(alice_api, oauth_server)
    assert charlie_api.post("/api/v1/oauth/authorize/", {"provider": provider["id"]}).status_code == 400
    connect(alice_api, Client(), provider=provider["id"])
    assert charlie_api.get("/api/v1/oauth/tokens/").json()["results"] == []
    with scoping.organization_scope(globex):
        assert not OAuthToken.objects.exists()


def test_a_provider_without_s256_is_refused(alice_api, settings):
    # An OpenID provider whose discovery document says it cannot do S256 (served by the test
    # server's own metadata is S256-only, so this one is a small static double).
    from tests.oauth.doubles import serve_json

    with serve_json({"/.well-known/openid-configuration": {
        "issuer": "http://127.0.0.1/", "authorization_endpoint": "http://127.0.0.1:9/a", "token_endpoint": "http://127.0.0.1:9/t",
        "code_challenge_methods_supported": ["plain"],
    }}) as base:  # fmt: skip
        response = alice_api.post(
            "/api/v1/oauth/providers/",
            {
                "name": "plain-only",
                "kind": "oidc",
                "client_id": "x",
                "discovery_url": f"{base}/.well-known/openid-configuration",
            },
        )
    assert response.status_code == 400 and error_of(response)["code"] == "pkce_not_supported"
