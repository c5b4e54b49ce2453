"""The MCP and OAuth tests' real servers and settings, for the session tests that use them."""

from tests.mcp.conftest import http_server, mcp_settings  # noqa: F401 (fixtures)
from tests.oauth.conftest import oauth_server  # noqa: F401 (a fixture)
