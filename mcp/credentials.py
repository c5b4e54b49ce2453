"""How the platform reaches a configuration's server as a given caller: the pool's Target.

This is the one place a credential is chosen for an upstream call. Shared bearer tokens and
custom headers come from the configuration; `oauth` configurations will use the calling user's
connection (the OAuth issue plugs in here, and the pool keys sessions by the credential's
fingerprint, so two users never share a session). The caller's own credential to the platform is
never forwarded upstream.
"""

from agentapi.crypto import DecryptionError
from agentapi.errors import APIError
from mcp import stdio
from mcp.models import AuthType, MCPConfiguration, Transport
from mcp.pool import Target
from oauth import services as oauth_services


def _configured_headers(configuration: MCPConfiguration) -> dict:
    try:
        return configuration.credential_headers()
    except DecryptionError:
        # The row's credential cannot be read with the configured keys: an operator problem,
        # answered without detail, never by calling the server without it.
        raise APIError(
            "credential_unreadable", "The server's stored credential cannot be decrypted; re-enter it.", status=409
        ) from None


def _oauth_headers(configuration: MCPConfiguration, user_id: int | None) -> dict:
    """The calling user's own connection: refreshed when it has expired; 409 naming what to do
    when there is none or it must be renewed."""
    provider = configuration.oauth_provider
    if provider is None or user_id is None:
        raise APIError(
            "oauth_connection_required",
            "Connect your account first: POST /api/v1/oauth/authorize/ with this mcp_configuration.",
            status=409,
            details={"mcp_configuration": configuration.pk},
        )
    access_token, token = oauth_services.access_token_for(user_id=user_id, provider=provider)
    return {"Authorization": f"{'Bearer' if token.token_type.lower() == 'bearer' else token.token_type} {access_token}"}


def target_for(configuration: MCPConfiguration, user_id: int | None = None) -> Target:
    if configuration.auth_type == AuthType.OAUTH:
        headers = _oauth_headers(configuration, user_id)
    else:
        headers = _configured_headers(configuration)
    stdio_command, workspace = None, None
    if configuration.transport == Transport.STDIO:
        template = configuration.stdio_template
        workspace = stdio.current_workspace() if stdio.uses_workspace(template) else None
        try:
            executable, argv, env = stdio.command_line(template, configuration.stdio_arguments, workspace)
        except FileNotFoundError:
            raise APIError("upstream_error", "The stdio template's command is not installed.", status=502) from None
        stdio_command = (executable, tuple(argv), tuple(sorted(env.items())))
    return Target(
        configuration_id=configuration.pk,
        organization_id=configuration.organization_id,
        revision=configuration.revision,
        transport=configuration.transport,
        url=configuration.url,
        headers=tuple(sorted(headers.items())),
        stdio=stdio_command,
        workspace=workspace,
    )
