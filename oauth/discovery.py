"""Finding a protected resource's authorization server the way the MCP specification says, and
registering a client with it.

1. The resource answers 401 with `WWW-Authenticate: Bearer resource_metadata="..."`, or, failing
   that, its metadata is at the well-known path (RFC 9728, protected resource metadata).
2. The metadata names the authorization server; its metadata is at the RFC 8414 well-known path
   (then OpenID Connect discovery).
3. Where the server allows it, a client is registered dynamically (RFC 7591).

Every URL, including each one taken from metadata, passes the outbound rules before it is dialled.
"""

import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx2

from agentapi import http, outbound
from agentapi.errors import APIError
from oauth.services import _require_s256, fetch_json

_RESOURCE_METADATA = re.compile(r'resource_metadata="([^"]+)"')


@dataclass
class Discovered:
    resource: str
    authorization_server: dict  # RFC 8414 metadata


def _well_known(url: str, name: str) -> str:
    """RFC 8414/9728 path insertion: https://h/p -> https://h/.well-known/<name>/p."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, f"/.well-known/{name}{path}", "", ""))


def _challenge(resource_url: str) -> str | None:
    """The resource_metadata URL from the resource's 401, if it gives one."""
    try:
        response = http.request(
            "POST",
            resource_url,
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"Accept": "application/json, text/event-stream"},
        )
    except outbound.OutboundURLRefused as exc:
        raise APIError(exc.code, str(exc), status=400) from None
    except httpx2.HTTPError as exc:
        raise APIError(
            "upstream_error", f"The server could not be reached ({type(exc).__name__}).", status=502
        ) from None
    if response.status_code != 401:
        return None
    match = _RESOURCE_METADATA.search(response.headers.get("www-authenticate", ""))
    return match.group(1) if match else None


def discover(resource_url: str) -> Discovered:
    """Raises APIError (400 for refused URLs or servers, 502 for unreachable ones)."""
    metadata_url = _challenge(resource_url) or _well_known(resource_url, "oauth-protected-resource")
    protected = fetch_json(metadata_url, field="resource_metadata")
    servers = protected.get("authorization_servers")
    if not isinstance(servers, list) or not servers or not isinstance(servers[0], str):
        raise APIError("oauth_discovery_failed", "The server's metadata names no authorization server.", status=502)
    issuer = servers[0]
    try:
        authorization_server = fetch_json(
            _well_known(issuer, "oauth-authorization-server"), field="authorization_server"
        )
    except APIError as exc:
        if exc.status_code == 400:
            raise
        authorization_server = fetch_json(_well_known(issuer, "openid-configuration"), field="authorization_server")
    for name in ("authorization_endpoint", "token_endpoint"):
        if not isinstance(authorization_server.get(name), str):
            raise APIError("oauth_discovery_failed", f"The authorization server's metadata has no {name}.", status=502)
    _require_s256(authorization_server)
    resource = protected.get("resource") if isinstance(protected.get("resource"), str) else resource_url
    return Discovered(resource=resource, authorization_server=authorization_server)


def register_client(metadata: dict, *, redirect_uri: str, client_name: str) -> dict:
    """RFC 7591 dynamic registration. Returns the server's answer (client_id, maybe client_secret)."""
    endpoint = metadata.get("registration_endpoint")
    if not isinstance(endpoint, str):
        raise APIError(
            "oauth_registration_unavailable",
            "The authorization server does not allow dynamic registration; an admin must add the provider.",
            status=409,
        )
    methods = metadata.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
    method = "client_secret_post" if "client_secret_post" in methods else methods[0]
    request = {
        "client_name": client_name,
        "redirect_uris": [redirect_uri],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": method,
    }
    try:
        response = http.request("POST", endpoint, json=request, headers={"Accept": "application/json"})
    except outbound.OutboundURLRefused as exc:
        raise APIError(exc.code, str(exc), status=400) from None
    except httpx2.HTTPError as exc:
        raise APIError("upstream_error", f"Registration failed ({type(exc).__name__}).", status=502) from None
    try:
        answer = response.json()
    except ValueError:
        answer = {}
    if response.status_code not in (200, 201) or not isinstance(answer, dict) or not answer.get("client_id"):
        raise APIError(
            "oauth_registration_failed",
            f"The authorization server refused the registration ({response.status_code}).",
            status=502,
        )
    answer.setdefault("token_endpoint_auth_method", method)
    return answer
