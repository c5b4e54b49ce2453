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
