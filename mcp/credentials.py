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


def target_for(configuration: MCPConfiguration, user_id: int | None = None) -> Target:
    if configuration.auth_type == AuthType.OAUTH:
        raise APIError("not_supported", "OAuth connections are not available on this platform yet.", status=409)
    try:
        headers = configuration.credential_headers()
    except DecryptionError:
        # The row's credential cannot be read with the configured keys: an operator problem,
        # answered without detail, never by calling the server without it.
        raise APIError(
            "credential_unreadable", "The server's stored credential cannot be decrypted; re-enter it.", status=409
        ) from None
    stdio_command = None
    if configuration.transport == Transport.STDIO:
        try:
            executable, argv, env = stdio.command_line(configuration.stdio_template, configuration.stdio_arguments)
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
    )
