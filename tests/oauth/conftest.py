"""A real OAuth 2.0 authorization server on loopback: fastmcp's (the MCP SDK's authorization
handlers over fastmcp's in-memory provider), which also serves an MCP server that demands its
tokens. It supports PKCE (S256 only), refresh with rotation, revocation (RFC 7009), dynamic
registration (RFC 7591) and the metadata documents (RFC 8414, RFC 9728)."""

import json
import urllib.request
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from agentapi.settings.base import parse_networks
from mcp import pool
from tests.mcp.conftest import RunningServer

REDIRECT_URI = "http://testserver/oauth/callback/"


@pytest.fixture
def oauth_server():
    server = RunningServer("--oauth")
    server.base = f"http://127.0.0.1:{server.port}"
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def loopback_allowed(settings):
    from oauth import services

    settings.OUTBOUND_ALLOWED_NETWORKS = parse_networks(["127.0.0.0/8"])
    services._token_cache.clear()
    yield settings
    services._token_cache.clear()
    pool.shutdown()


def register_client(server, redirect_uri=REDIRECT_URI) -> dict:
    request = urllib.request.Request(
        f"{server.base}/register",
        data=json.dumps(
            {
                "redirect_uris": [redirect_uri],
                "grant_types": ["authorization_code", "refresh_token"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "client_secret_post",
            }
        ).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def make_provider(api, server, name="loopback") -> dict:
    client = register_client(server)
    response = api.post(
        "/api/v1/oauth/providers/",
        {
            "name": name,
            "kind": "oauth2",
            "client_id": client["client_id"],
            "client_secret": client["client_secret"],
            "authorization_endpoint": f"{server.base}/authorize",
            "token_endpoint": f"{server.base}/token",
            "revocation_endpoint": f"{server.base}/revoke",
        },
    )
    assert response.status_code == 201, response.content
    return response.json()


def consent(authorization_url: str) -> dict:
    """What the user's browser does at the provider: it grants, and is sent back to the callback.
    (fastmcp's in-memory server grants at once.) Returns the callback's query."""
    response = httpx.get(authorization_url, follow_redirects=False, timeout=10)
    assert response.status_code in (302, 307), response.text
    location = urlsplit(response.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == REDIRECT_URI
    return {key: values[0] for key, values in parse_qs(location.query).items()}


def connect(api, client, **target) -> dict:
    """The whole flow for the API caller: authorize, consent, callback. Returns the callback query."""
    started = api.post("/api/v1/oauth/authorize/", target)
    assert started.status_code == 200, started.content
    query = consent(started.json()["authorization_url"])
    page = client.get("/oauth/callback/", query)
    assert page.status_code == 200, page.content.decode()[:2000]
    return query
