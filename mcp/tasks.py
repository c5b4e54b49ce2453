from celery import shared_task

from mcp import health


@shared_task
def mcp_configurations_check_health():
    """The scheduled health check of every enabled configuration (MCP_HEALTH_CHECK_INTERVAL)."""
    return health.check_all()
