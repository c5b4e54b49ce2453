"""The console's actions on rows, each through the platform's services and audited as the person's:
disable and enable a server, refresh a connection at a real OAuth authorization server (fastmcp's),
approve a changed tool. Staff act on their organization's rows only."""

from django.test import Client

from audit.models import AuditEvent
from mcp.models import MCPConfiguration
from oauth.models import OAuthToken
from tenants import scoping
from tests.console.test_dashboard import server, staff_of
from tests.oauth.conftest import loopback_allowed, oauth_server  # noqa: F401 (fixtures)
from tests.oauth.test_tokens import connected_token


def act(client: Client, model: str, action: str, *pks) -> str:
    response = client.post(f"/admin/{model}/", {"action": action, "_selected_action": [str(pk) for pk in pks]},
                           follow=True)  # fmt: skip
    assert response.status_code == 200
    return " ".join(str(message) for message in response.context["messages"])


def test_staff_disable_and_enable_their_server_and_each_change_is_audited(acme, globex):
    ours, theirs = server(acme, "acme-tools"), server(globex, "globex-tools")
    client = staff_of(acme)
    assert "Disabled 1" in act(client, "mcp/mcpconfiguration", "disable_configurations", ours.pk)
    # Another organization's row is not among those an action can reach.
    act(client, "mcp/mcpconfiguration", "disable_configurations", theirs.pk)
    with scoping.organization_scope(globex):
        assert MCPConfiguration.objects.get(pk=theirs.pk).enabled
    with scoping.organization_scope(acme):
        disabled = MCPConfiguration.objects.get(pk=ours.pk)
        assert (disabled.enabled, disabled.status) == (False, "disabled")
    assert "Enabled 1" in act(client, "mcp/mcpconfiguration", "enable_configurations", ours.pk)
    with scoping.organization_scope(acme):
        assert MCPConfiguration.objects.get(pk=ours.pk).enabled
        events = AuditEvent.objects.filter(action__in=["mcp.configuration.disable", "mcp.configuration.enable"])
        assert sorted(events.values_list("action", "actor_label")) == [
            ("mcp.configuration.disable", "staff@acme.test"), ("mcp.configuration.enable", "staff@acme.test")
        ]  # fmt: skip


def test_refreshing_a_connection_from_the_console_gets_new_tokens_from_the_provider(alice_api, acme, oauth_server):  # noqa: F811
    token = connected_token(alice_api, oauth_server, acme)
    old_access = token.access_token()
    client = staff_of(acme)
    shown = act(client, "oauth/oauthtoken", "refresh", token.pk)
    assert "refreshed" in shown, shown
    with scoping.organization_scope(acme):
        token = OAuthToken.objects.get(pk=token.pk)
        event = AuditEvent.objects.filter(action="oauth.token.refresh").latest("id")
    assert token.access_token() != old_access and oauth_server.stats()["token:refresh_token"] == 1
    assert event.actor_label == "staff@acme.test" and event.details["reason"] == "admin"
    page = client.get(f"/admin/oauth/oauthtoken/{token.pk}/change/").content.decode()
    assert token.access_token() not in page and token.refresh_token() not in page  # never shown
