"""Health checks of configured MCP servers: the scheduled job's work, one organization at a time.

A check connects (through the pool and its breaker, like any call) and lists tools. The result is
recorded on the configuration (status, last error, failures in a row); after
MCP_HEALTH_DISABLE_AFTER failures in a row the configuration is disabled, audited, until an admin
enables it again. Configurations that need a user's credential (OAuth, a user's own server) are
checked as their owner; OAuth ones wait for the user's connection and are skipped here.
"""

import logging

from agentapi.errors import APIError
from mcp import proxy, services
from mcp.models import AuthType, MCPConfiguration
from tenants import scoping
from tenants.models import Organization

log = logging.getLogger(__name__)


def check(configuration: MCPConfiguration) -> bool:
    """Test the configuration (connect, list tools) and record the result; a configuration problem
    (an unreadable credential, a missing command) is recorded as a failed check."""
    try:
        result = proxy.test_connection(configuration=configuration, user_id=configuration.owner_id)
    except APIError as exc:
        services.mcp_configuration_record_check(
            configuration=configuration, ok=False, error=f"{exc.error_code}: {exc.detail}"
        )
        return False
    error = "" if result["ok"] else f"{result['error']['code']}: {result['error']['message']}"
    services.mcp_configuration_record_check(configuration=configuration, ok=result["ok"], error=error)
    return result["ok"]


def check_organization(organization: Organization) -> dict:
    counts = {"healthy": 0, "unhealthy": 0}
    with scoping.organization_scope(organization):
        configurations = MCPConfiguration.objects.filter(enabled=True).exclude(auth_type=AuthType.OAUTH)
        for configuration in configurations.select_related("stdio_template", "organization"):
            counts["healthy" if check(configuration) else "unhealthy"] += 1
    return counts


def check_all() -> dict:
    totals = {"organizations": 0, "healthy": 0, "unhealthy": 0}
    for organization in Organization.objects.filter(is_active=True):
        counts = check_organization(organization)
        totals["organizations"] += 1
        totals["healthy"] += counts["healthy"]
        totals["unhealthy"] += counts["unhealthy"]
    log.info("mcp health check", extra=totals)
    return totals
