"""MCP servers that demand OAuth: finding their authorization server, registering the platform as
a client, and starting a user's connection (POST /api/v1/oauth/authorize/ {"mcp_configuration"})."""

import secrets

from django.db import transaction

from agentapi.errors import APIError
from audit.services import audit_record
from mcp.models import AuthType, MCPConfiguration
from mcp.services import configurations_visible_to
from oauth import discovery
from oauth.models import Kind, OAuthProvider


def _invalid(message: str) -> APIError:
    return APIError("invalid", message, status=400, details={"mcp_configuration": [message]})


def provider_for(configuration: MCPConfiguration, *, redirect_uri: str) -> OAuthProvider:
    """The configuration's provider: chosen by an admin, or discovered and registered now."""
    if configuration.oauth_provider_id:
        return configuration.oauth_provider
    found = discovery.discover(configuration.url)
    metadata = found.authorization_server
    registration = discovery.register_client(
        metadata, redirect_uri=redirect_uri, client_name=f"AgentAPI ({configuration.name})"
    )
    with transaction.atomic():
        locked = MCPConfiguration.objects.select_for_update().get(pk=configuration.pk)
        if locked.oauth_provider_id:  # registered meanwhile by another request
            return locked.oauth_provider
        provider = OAuthProvider(
            organization_id=configuration.organization_id,
            kind=Kind.MCP,
            name=f"mcp-{configuration.pk}-{secrets.token_hex(3)}",
            display_name=configuration.name,
            client_id=registration["client_id"],
            authorization_endpoint=metadata["authorization_endpoint"],
            token_endpoint=metadata["token_endpoint"],
            revocation_endpoint=metadata.get("revocation_endpoint") or "",
            issuer=str(metadata.get("issuer") or ""),
            scopes=[],  # no scope parameter: the server grants its default for this resource
            token_endpoint_auth_method=registration["token_endpoint_auth_method"],
            resource=found.resource,
        )
        provider.set_client_secret(registration.get("client_secret") or "")
        provider.save()
        locked.oauth_provider = provider
        locked.save(update_fields=["oauth_provider", "updated_at"])
        audit_record(
            "mcp.configuration.oauth_register",
            target=locked,
            organization_id=locked.organization_id,
            details={"provider": provider.name, "issuer": provider.issuer},
        )
    return provider


def resolve_authorize_target(principal, configuration_id: int, redirect_uri: str):
    """For oauth.api's POST /authorize/: (provider, resource) of a configuration the caller sees."""
    configuration = (
        configurations_visible_to(principal).select_related("oauth_provider").filter(pk=configuration_id).first()
    )
    if configuration is None:
        raise _invalid("No such MCP server.")
    if configuration.auth_type != AuthType.OAUTH:
        raise _invalid("This MCP server does not use OAuth.")
    provider = provider_for(configuration, redirect_uri=redirect_uri)
    return provider, provider.resource or configuration.url
