from tests.mcp.conftest import http_server, mcp_settings  # noqa: F401 (fixtures)
