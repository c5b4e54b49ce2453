"""The scheduled health check: status and last error recorded, a configuration disabled after a run
of failures (audited, visible in the API), enabled again by an admin; run by a real Celery worker."""

import os
import subprocess
import sys
import time
from pathlib import Path

from audit.models import AuditEvent
from mcp import health
from mcp.models import MCPConfiguration
from mcp.tasks import mcp_configurations_check_health
from tenants import scoping
from tests.conftest import committed, error_of
from tests.mcp.conftest import configure

# The calls go through the data plane, which reads committed rows on its own connections.
pytestmark = committed

ROOT = Path(__file__).resolve().parents[2]


def test_a_run_of_failures_disables_the_configuration_until_an_admin_enables_it(alice_api, own_server, acme, settings):
    settings.MCP_BREAKER_FAIL_MAX = 100  # count the checks themselves, not the breaker
    configuration = configure(alice_api, url=own_server.url)
    assert health.check_all()["healthy"] >= 1
    body = alice_api.get(f"/api/v1/mcp/configurations/{configuration['id']}/").json()
    assert body["status"] == "healthy" and body["last_checked_at"]
    own_server.stop()
    for _ in range(settings.MCP_HEALTH_DISABLE_AFTER):
        health.check_all()
    body = alice_api.get(f"/api/v1/mcp/configurations/{configuration['id']}/").json()
    assert body["enabled"] is False and body["status"] == "disabled"
    assert body["consecutive_failures"] == 5 and body["last_error"].startswith("upstream_error")
    refused = alice_api.post(
        f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/", {"name": "echo", "arguments": {}}
    )
    assert refused.status_code == 409 and error_of(refused)["code"] == "configuration_disabled"
    with scoping.organization_scope(acme):
        disabled = AuditEvent.objects.get(action="mcp.configuration.disable")
    assert disabled.outcome == "failure" and disabled.details["failures"] == 5
    enabled = alice_api.patch(f"/api/v1/mcp/configurations/{configuration['id']}/", {"enabled": True}).json()
    assert enabled["enabled"] is True and enabled["status"] == "unknown" and enabled["consecutive_failures"] == 0


def test_a_real_worker_runs_the_health_check(acme, alice, http_server):
    from tests.conftest import Api, make_key

    api = Api(make_key(alice))
    configuration = configure(api, url=http_server.url)
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "agentapi", "worker", "--pool=solo", "--loglevel=WARNING",
         "--without-heartbeat", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env={**os.environ, "OUTBOUND_ALLOWED_NETWORKS": "127.0.0.0/8"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        mcp_configurations_check_health.delay()
        deadline = time.monotonic() + 60
        status = None
        while status != "healthy" and time.monotonic() < deadline:
            with scoping.organization_scope(acme):
                status = MCPConfiguration.objects.get(pk=configuration["id"]).status
            time.sleep(0.2)
        assert status == "healthy"
    finally:
        worker.terminate()
        worker.communicate(timeout=30)
