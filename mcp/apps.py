from django.apps import AppConfig


class MCPConfig(AppConfig):
    name = "mcp"
    verbose_name = "MCP servers"

    def ready(self):
        from mcp.models import MCPConfiguration
        from tenants.secrets import register_sealed_field

        register_sealed_field(MCPConfiguration, "bearer_token_encrypted", lambda row: row._context("bearer_token"))
        register_sealed_field(MCPConfiguration, "headers_encrypted", lambda row: row._context("headers"))

        from mcp.connections import resolve_authorize_target
        from oauth.api.views import AUTHORIZE_TARGETS

        AUTHORIZE_TARGETS["mcp_configuration"] = resolve_authorize_target

        from agentapi.health import REPORTS
        from mcp.pool import breakers_mode

        REPORTS["breakers"] = breakers_mode
