"""Production settings for the MCP benchmark: plain HTTP on loopback, everything else as shipped
(JSON access logs included)."""

from agentapi.settings.production import *  # noqa: F403

SECURE_SSL_REDIRECT = False
