"""Providers: presets, OpenID Connect discovery, explicit endpoints; platform-wide ones from the
operators; client secrets write-only and sealed; every endpoint under the outbound rules."""

import pytest

from oauth.models import OAuthProvider
from tenants import scoping
from tests.conftest import error_of
from tests.oauth.doubles import serve_json


@pytest.mark.parametrize(
    ("kind", "extra", "authorize", "token"),
    [
        ("github", {}, "https://github.com/login/oauth/authorize", "https://github.com/login/oauth/access_token"),
        ("google", {}, "https://accounts.google.com/o/oauth2/v2/auth", "https://oauth2.googleapis.com/token"),
        ("entra", {"tenant": "contoso.onmicrosoft.com"}, "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/authorize", "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"),
        ("auth0", {"domain": "example.eu.auth0.com"}, "https://example.eu.auth0.com/authorize", "https://example.eu.auth0.com/oauth/token"),
    ],
)  # fmt: skip
def test_presets_fill_in_the_endpoints(alice_api, settings, kind, extra, authorize, token):
    # The real hosts cannot be resolved here (no internet): a provider is saved all the same, and
    # every request to it is checked (and resolved) when it is made.
    response = alice_api.post(
        "/api/v1/oauth/providers/", {"name": kind, "kind": kind, "client_id": "id", "client_secret": "shh", **extra}
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["authorization_endpoint"] == authorize and body["token_endpoint"] == token
    assert body["has_client_secret"] is True and "shh" not in str(body)


def test_an_openid_provider_is_configured_from_its_discovery_document(alice_api, settings):
    from agentapi.settings.base import parse_networks

    settings.OUTBOUND_ALLOWED_NETWORKS = parse_networks(["127.0.0.0/8"])
    with serve_json({"/.well-known/openid-configuration": {
        "issuer": "http://127.0.0.1/", "authorization_endpoint": "http://127.0.0.1:9/auth", "token_endpoint": "http://127.0.0.1:9/token",
        "revocation_endpoint": "http://127.0.0.1:9/revoke", "code_challenge_methods_supported": ["S256"],
    }}) as base:  # fmt: skip
        response = alice_api.post("/api/v1/oauth/providers/", {
            "name": "idp", "kind": "oidc", "client_id": "id", "discovery_url": f"{base}/.well-known/openid-configuration",
        })  # fmt: skip
    assert response.status_code == 201, response.content
    assert response.json()["token_endpoint"] == "http://127.0.0.1:9/token"
    assert response.json()["revocation_endpoint"] == "http://127.0.0.1:9/revoke"


def test_endpoints_are_checked_against_the_outbound_rules(alice_api, settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    response = alice_api.post("/api/v1/oauth/providers/", {
        "name": "metadata", "kind": "oauth2", "client_id": "id",
        "authorization_endpoint": "https://login.example.com/authorize", "token_endpoint": "http://169.254.169.254/token",
    })  # fmt: skip
    assert response.status_code == 400 and error_of(response)["code"] == "private_address"
    discovery = alice_api.post(
        "/api/v1/oauth/providers/",
        {
            "name": "x",
            "kind": "oidc",
            "client_id": "id",
            "discovery_url": "http://127.0.0.1:9/.well-known/openid-configuration",
        },
    )
    assert discovery.status_code == 400 and error_of(discovery)["code"] == "private_address"


def test_platform_providers_are_the_operators_and_visible_to_every_organization(
    operator_api, alice_api, bob_api, charlie_api
):
    body = {"name": "company-github", "kind": "github", "client_id": "id", "client_secret": "s", "platform": True}
    assert alice_api.post("/api/v1/oauth/providers/", body).status_code == 403  # an owner, not an operator
    created = operator_api.post("/api/v1/oauth/providers/", body)
    assert created.status_code == 201 and created.json()["platform"] is True
    assert "company-github" in [p["name"] for p in charlie_api.get("/api/v1/oauth/providers/").json()["results"]]
    assert (
        charlie_api.patch(f"/api/v1/oauth/providers/{created.json()['id']}/", {"display_name": "mine"}).status_code
        == 403
    )
    own = {"name": "acme-only", "kind": "github", "client_id": "id"}
    assert bob_api.post("/api/v1/oauth/providers/", own).status_code == 403  # members use what they are given
    assert alice_api.post("/api/v1/oauth/providers/", own).status_code == 201
    assert "acme-only" not in [p["name"] for p in charlie_api.get("/api/v1/oauth/providers/").json()["results"]]


def test_a_client_secret_is_sealed_and_write_only(alice_api, acme):
    created = alice_api.post(
        "/api/v1/oauth/providers/",
        {"name": "gh", "kind": "github", "client_id": "id", "client_secret": "very-secret-value"},
    ).json()
    with scoping.organization_scope(acme):
        row = OAuthProvider.objects.get(pk=created["id"])
    assert row.client_secret_sealed.startswith("e1:") and "very-secret" not in row.client_secret_sealed
    assert row.client_secret() == "very-secret-value"
    changed = alice_api.patch(f"/api/v1/oauth/providers/{created['id']}/", {"client_secret": "rotated-secret"}).json()
    assert "rotated" not in str(changed)
