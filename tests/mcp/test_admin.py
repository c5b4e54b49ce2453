"""The admin for MCP servers: credentials write-only and encrypted, the API's checks apply,
templates for operators only, and a disabled configuration enabled again with an audited action."""

from audit.models import AuditEvent
from mcp.models import MCPConfiguration, Status
from tenants import scoping
from tests.mcp.conftest import TOKEN
from tests.tenants.test_sessions_and_admin import signed_in


def form(acme, **fields):
    return {
        "organization": acme.pk, "name": "from admin", "owner": "", "transport": "streamable-http", "url": "",
        "stdio_template": "", "stdio_arguments": "{}", "auth_type": "none", "allowed_tools": "null", "enabled": "on",
        "bearer_token": "", "headers": "", **fields,
    }  # fmt: skip


def test_a_token_entered_in_the_admin_is_encrypted_and_never_shown(operator, acme, bearer_server):
    client = signed_in("operator@platform.test")
    response = client.post(
        "/admin/mcp/mcpconfiguration/add/", form(acme, url=bearer_server.url, auth_type="bearer", bearer_token=TOKEN)
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    with scoping.organization_scope(acme):
        row = MCPConfiguration.objects.get(name="from admin")
        assert AuditEvent.objects.filter(action="mcp.configuration.create").exists()
    assert row.bearer_token_encrypted.startswith("e1:") and row.credential_headers() == {
        "Authorization": f"Bearer {TOKEN}"
    }
    for page in (f"/admin/mcp/mcpconfiguration/{row.pk}/change/", "/admin/mcp/mcpconfiguration/"):
        html = client.get(page).content.decode()
        assert TOKEN not in html and row.bearer_token_encrypted not in html


def test_the_admin_applies_the_outbound_rules(operator, acme, settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    client = signed_in("operator@platform.test")
    response = client.post("/admin/mcp/mcpconfiguration/add/", form(acme, url="http://169.254.169.254/latest"))
    assert response.status_code == 200 and "not a public address" in response.content.decode()
    with scoping.organization_scope(acme):
        assert not MCPConfiguration.objects.exists()


def test_stdio_templates_are_for_operators_only(operator, alice, acme):
    from tenants.models import User

    User.objects.filter(pk=alice.user_id).update(is_staff=True)
    assert signed_in("alice@acme.test").get("/admin/mcp/stdiotemplate/").status_code == 403
    client = signed_in("operator@platform.test")
    assert client.get("/admin/mcp/stdiotemplate/").status_code == 200
    refused = client.post(
        "/admin/mcp/stdiotemplate/add/",
        {"name": "bad", "command": "/usr/bin/python3", "arguments": "[]", "allowed_arguments": "[]",
         "allowed_env": '["LD_PRELOAD"]', "env": "{}", "memory_limit_mb": 512, "cpu_limit_seconds": 60, "open_files_limit": 64},
    )  # fmt: skip
    assert refused.status_code == 200 and "never allowed" in refused.content.decode()


def test_an_admin_enables_a_disabled_configuration_and_it_is_audited(operator, acme):
    with scoping.organization_scope(acme):
        row = MCPConfiguration.objects.create(
            organization=acme,
            name="down",
            url="https://mcp.example.com/mcp",
            enabled=False,
            status=Status.DISABLED,
            consecutive_failures=5,
        )
    client = signed_in("operator@platform.test")
    response = client.post(
        "/admin/mcp/mcpconfiguration/", {"action": "enable_configurations", "_selected_action": [row.pk]}
    )
    assert response.status_code == 302
    with scoping.organization_scope(acme):
        row.refresh_from_db()
        assert AuditEvent.objects.filter(action="mcp.configuration.enable", target_id=str(row.pk)).exists()
    assert row.enabled and row.status == Status.UNKNOWN and row.consecutive_failures == 0
