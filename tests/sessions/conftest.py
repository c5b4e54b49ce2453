"""The MCP tests' real servers and settings, for the session tests that use them."""

from tests.mcp.conftest import http_server, mcp_settings  # noqa: F401 (fixtures)
