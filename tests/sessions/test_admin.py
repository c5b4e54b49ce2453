"""System prompts in the admin: read-only layers with versions and findings, scoped like every
admin page, and the composed prompt previewed for a chosen member."""

import re

import pytest
from django.test import Client

from sessions_app.models import SystemPrompt
from tenants import scoping
from tenants.models import User
from tests.sessions.test_prompts import create

pytestmark = pytest.mark.django_db


def signed_in(email: str) -> Client:
    client = Client()
    client.force_login(User.objects.get(email=email))
    return client


@pytest.fixture
def layers(operator_api, alice_api, bob_api, charlie_api):
    create(operator_api, "global", "platform-rules", "Platform rules.")
    acme = create(alice_api, "organization", "acme-style", "Acme serves {{ organization.name }}.")
    alice_api.patch(f"/api/v1/prompts/{acme['id']}/", {"content": "Acme, version two."})
    create(bob_api, "user", "bobs-own", "Call me Bob.")
    create(charlie_api, "organization", "globex-style", "Globex only.")
    return acme


def test_operators_see_every_layer_read_only_with_its_versions(layers):
    client = signed_in("operator@platform.test")
    page = client.get("/admin/sessions_app/systemprompt/").content.decode()
    for name in ("platform-rules", "acme-style", "bobs-own", "globex-style"):
        assert name in page
    detail = client.get(f"/admin/sessions_app/systemprompt/{layers['id']}/change/")
    assert detail.status_code == 200
    html = detail.content.decode()
    assert "Acme, version two." in html and "Acme serves {{ organization.name }}." in html  # both versions
    assert 'name="_save"' not in html  # read-only
    assert client.get("/admin/sessions_app/systemprompt/add/").status_code == 403


def test_staff_see_their_organizations_layers_and_the_platforms_only(layers, alice):
    User.objects.filter(email="alice@acme.test").update(is_staff=True)
    client = signed_in("alice@acme.test")
    page = client.get("/admin/sessions_app/systemprompt/").content.decode()
    assert "acme-style" in page and "platform-rules" in page and "globex-style" not in page
    with scoping.dangerously_all_organizations(reason="test", record=False):
        globex = SystemPrompt.objects.get(name="globex-style")
    assert client.get(f"/admin/sessions_app/systemprompt/{globex.pk}/change/").status_code in (302, 404)


def test_the_preview_composes_for_a_chosen_member(layers, bob, charlie):
    client = signed_in("operator@platform.test")
    assert client.get("/admin/sessions_app/systemprompt/preview/").status_code == 200
    page = client.post("/admin/sessions_app/systemprompt/preview/", {"member": bob.pk, "variables": "{}"})
    composed = re.search(r'<pre id="composed-prompt"[^>]*>(.*?)</pre>', page.content.decode(), re.S).group(1)
    assert composed == "Platform rules.\n\nAcme, version two.\n\nCall me Bob."


def test_staff_cannot_preview_another_organizations_member(layers, alice, charlie):
    User.objects.filter(email="alice@acme.test").update(is_staff=True)
    page = signed_in("alice@acme.test").post(
        "/admin/sessions_app/systemprompt/preview/", {"member": charlie.pk, "variables": "{}"}
    )
    assert page.status_code == 200 and "composed-prompt" not in page.content.decode()
    assert "Globex only." not in page.content.decode()


def test_sessions_are_listed_and_closed_or_extended_in_the_admin(alice, alice_api, charlie_api, acme):
    from audit.models import AuditEvent
    from sessions_app.models import AgentSession

    mine = alice_api.post("/api/v1/sessions/", {"name": "alices-session"}).json()["id"]
    charlie_api.post("/api/v1/sessions/", {"name": "charlies-session"})
    User.objects.filter(email="alice@acme.test").update(is_staff=True)
    client = signed_in("alice@acme.test")
    page = client.get("/admin/sessions_app/agentsession/").content.decode()
    assert "alices-session" in page and "charlies-session" not in page
    assert client.get(f"/admin/sessions_app/agentsession/{mine}/change/").status_code == 200
    with scoping.organization_scope(acme):
        before = AgentSession.objects.get(pk=mine).expires_at
    changelist = "/admin/sessions_app/agentsession/"
    client.post(changelist, {"action": "extend_sessions", "_selected_action": [mine]})
    client.post(changelist, {"action": "close_sessions", "_selected_action": [mine]})
    with scoping.organization_scope(acme):
        session = AgentSession.objects.get(pk=mine)
        assert session.status == "closed" and session.expires_at >= before
        assert set(AuditEvent.objects.filter(target_id=mine).values_list("action", flat=True)) == {
            "session.create", "session.extend", "session.closed",
        }  # fmt: skip
    response = client.post(changelist, {"action": "extend_sessions", "_selected_action": [mine]}, follow=True)
    assert "Only an active session can be extended." in response.content.decode()


ADMIN_KEY = "sk-admin-typed-key-never-shown-0123"


@pytest.fixture
def loopback(settings):
    from agentapi.settings.base import parse_networks

    settings.OUTBOUND_ALLOWED_NETWORKS = parse_networks(["127.0.0.0/8"])


def test_agent_backends_are_written_in_the_admin_with_the_key_write_only(alice, acme, loopback):
    from audit.models import AuditEvent
    from sessions_app.models import AgentBackend

    User.objects.filter(email="alice@acme.test").update(is_staff=True)
    client = signed_in("alice@acme.test")
    form = {"organization": acme.pk, "name": "gpt", "kind": "openai", "base_url": "http://127.0.0.1:9/v1",
            "model": "gpt-x", "settings": '{"max_steps": 4}', "enabled": "on", "api_key": ADMIN_KEY}  # fmt: skip
    created = client.post("/admin/sessions_app/agentbackend/add/", form)
    assert created.status_code == 302, created.content.decode()[:3000]
    with scoping.organization_scope(acme):
        backend = AgentBackend.objects.get(name="gpt")
        assert backend.api_key() == ADMIN_KEY and ADMIN_KEY not in backend.api_key_sealed
        assert backend.settings == {"max_steps": 4}
    page = client.get(f"/admin/sessions_app/agentbackend/{backend.pk}/change/").content.decode()
    assert ADMIN_KEY not in page and "API key set" in page
    # An empty key field keeps the key; a changed model bumps the revision; both audited without it.
    changed = client.post(f"/admin/sessions_app/agentbackend/{backend.pk}/change/",
                          {**form, "model": "gpt-y", "api_key": ""})  # fmt: skip
    assert changed.status_code == 302
    with scoping.organization_scope(acme):
        backend.refresh_from_db()
        assert backend.api_key() == ADMIN_KEY and backend.model == "gpt-y" and backend.revision == 2
        recorded = list(
            AuditEvent.objects.filter(action__startswith="agent.").order_by("id").values_list("action", "details")
        )
    assert [action for action, _ in recorded] == ["agent.create", "agent.update"]
    assert recorded[1][1] == {"changed": ["model"]} and ADMIN_KEY not in str(recorded)
    # Refused: a URL the outbound rules do not allow, and a platform backend by staff.
    bad = client.post("/admin/sessions_app/agentbackend/add/", {**form, "name": "x", "base_url": "http://10.0.0.1/"})
    assert bad.status_code == 200 and "not a public address" in bad.content.decode()
    platform = client.post("/admin/sessions_app/agentbackend/add/", {**form, "name": "y", "organization": ""})
    assert platform.status_code == 200 and "Only operators" in platform.content.decode()


def test_a_sessions_conversation_and_runs_are_readable_in_the_admin(alice, acme, charlie, globex, operator):
    from datetime import timedelta

    from django.utils import timezone

    from sessions_app.models import AgentMessage, AgentRun, AgentSession

    now = timezone.now()
    with scoping.organization_scope(acme):
        session = AgentSession.objects.create(organization=acme, user=alice.user, name="talk", last_active_at=now,
                                              expires_at=now + timedelta(hours=1), ends_at=now + timedelta(days=1))  # fmt: skip
        run = AgentRun.objects.create(organization=acme, session=session, status="failed", input_tokens=12,
                                      error={"code": "agent_error", "message": "The agent backend failed."})  # fmt: skip
        for seq, (role, content) in enumerate([("user", "Add 2 and 3."), ("assistant", ""), ("tool", '{"sum":5}')]):
            AgentMessage.objects.create(organization=acme, session=session, run=run, seq=seq, role=role,
                                        content=content, tool_name="plain__add" if role == "tool" else "")  # fmt: skip
    operator = signed_in("operator@platform.test")
    page = operator.get(f"/admin/sessions_app/agentsession/{session.pk}/change/").content.decode()
    assert "Add 2 and 3." in page and "plain__add" in page and "agent_error" in page
    runs_page = operator.get("/admin/sessions_app/agentrun/").content.decode()
    assert str(run.pk) in runs_page
    User.objects.filter(email="charlie@globex.test").update(is_staff=True)
    other = signed_in("charlie@globex.test")
    assert other.get(f"/admin/sessions_app/agentsession/{session.pk}/change/").status_code in (302, 404)
    assert str(run.pk) not in other.get("/admin/sessions_app/agentrun/").content.decode()


def test_a_terminal_agent_backend_is_written_in_the_admin_from_a_template(alice, acme):
    from mcp.models import StdioTemplate
    from sessions_app.models import AgentBackend

    template = StdioTemplate.objects.create(name="terminal", command="/bin/true", arguments=["--port", "{port}"],
                                            allowed_env=["AGENT_MODEL"])  # fmt: skip
    User.objects.filter(email="alice@acme.test").update(is_staff=True)
    client = signed_in("alice@acme.test")
    form = {"organization": acme.pk, "name": "claude", "kind": "agentapi", "template": template.pk,
            "template_arguments": '{"env": {"AGENT_MODEL": "sonnet"}}', "settings": "{}", "enabled": "on"}  # fmt: skip
    created = client.post("/admin/sessions_app/agentbackend/add/", form)
    assert created.status_code == 302, created.content.decode()[:3000]
    with scoping.organization_scope(acme):
        backend = AgentBackend.objects.get(name="claude")
    assert backend.template == template and backend.template_arguments == {
        "arguments": {},
        "env": {"AGENT_MODEL": "sonnet"},
    }
    # What the template does not allow, and a URL as well as a template, are refused on the form.
    refused = client.post("/admin/sessions_app/agentbackend/add/",
                          {**form, "name": "x", "template_arguments": '{"env": {"LD_PRELOAD": "/x.so"}}'})  # fmt: skip
    assert refused.status_code == 200 and "never allowed" in refused.content.decode()
    both = client.post(
        "/admin/sessions_app/agentbackend/add/", {**form, "name": "y", "base_url": "http://127.0.0.1:9/"}
    )
    assert both.status_code == 200 and "either the URL" in both.content.decode()
