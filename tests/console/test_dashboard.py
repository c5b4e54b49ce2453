"""The operators' console: the dashboard's figures, scoped (operators every organization, with a
filter; staff theirs only), each linking to the list behind it; a fixed number of queries; the
console's actions (verify a chain, export a time range), audited; and every admin page walked."""

import json
import re
from datetime import timedelta

import pytest
from django.contrib import admin
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit.models import AuditEvent
from audit.sequencer import audit_chain_extend
from audit.services import audit_record
from mcp.models import MCPConfiguration
from sessions_app.models import AgentRun, AgentSession
from tenants import scoping
from tests.conftest import streamed
from tests.tenants.test_sessions_and_admin import signed_in
from tests.tenants.test_sessions_and_admin import staff_admin_of as staff_of


def server(organization, name, status="healthy", enabled=True, calls=0, failures=0) -> MCPConfiguration:
    with scoping.organization_scope(organization):
        configuration = MCPConfiguration.objects.create(
            organization=organization, name=name, url=f"http://127.0.0.1:9/{name}", status=status, enabled=enabled
        )
        for i in range(calls + failures):
            audit_record("mcp.tool.call", target=configuration, organization_id=organization.pk,
                         outcome="success" if i < calls else "failure", details={"tool": "echo"})  # fmt: skip
    audit_chain_extend()  # the sequencer counts the calls into their hours as it chains them
    return configuration


@pytest.fixture
def landscape(acme, globex, alice, charlie):
    """Two organizations' servers, tool calls, sessions and a run."""
    made = {
        "acme-tools": server(acme, "acme-tools", calls=5, failures=2),
        "acme-broken": server(acme, "acme-broken", status="unhealthy", calls=1, failures=3),
        "acme-off": server(acme, "acme-off", status="disabled", enabled=False),
        "globex-secret-server": server(globex, "globex-secret-server", calls=3),
    }
    now = timezone.now()
    for organization, membership in ((acme, alice), (globex, charlie)):
        with scoping.organization_scope(organization):
            session = AgentSession.objects.create(
                organization=organization, user_id=membership.user_id, name="s", last_active_at=now,
                expires_at=now + timedelta(hours=1), ends_at=now + timedelta(hours=8),
            )  # fmt: skip
            AgentRun.objects.create(organization=organization, session=session)
    return made


def figure(page: str, label: str) -> tuple[str, str]:
    """(link, value) of the dashboard figure labelled `label`."""
    found = re.search(rf'data-figure="{label}">\s*<a href="([^"]*)">\s*<div class="value">([^<]*)</div>', page)
    assert found, f"no figure {label!r}"
    return found.group(1).replace("&amp;", "&"), found.group(2)


def test_an_operator_sees_every_organization_and_narrows_to_one(operator, acme, globex, landscape):
    client = signed_in("operator@platform.test")
    page = client.get("/admin/").content.decode()
    # The operator's crossing into every organization is on record as theirs, not the system's.
    with scoping.dangerously_all_organizations(reason="test", record=False):
        crossing = AuditEvent.objects.filter(action="tenants.scope.cross_organizations").latest("id")
    assert crossing.actor_label == "operator@platform.test" and crossing.details["reason"] == "operator admin session"
    assert "AgentAPI console" in page and "API documentation" in page and "View site" not in page
    assert figure(page, "healthy")[1] == "2" and figure(page, "failing")[1] == "1"
    assert figure(page, "disabled")[1] == "1" and figure(page, "active-sessions")[1] == "2"
    assert "acme-tools" in page and "globex-secret-server" in page
    assert "Tool calls, last 24 hours: 14 calls, 5 failed or refused" in page
    assert 'id="console-platform"' in page and "Readiness" in page
    narrowed = client.get(f"/admin/?organization={globex.pk}").content.decode()
    assert figure(narrowed, "healthy")[1] == "1" and figure(narrowed, "failing")[1] == "0"
    assert "acme-tools" not in narrowed and "globex-secret-server" in narrowed


def test_staff_see_their_organization_only_whatever_they_ask(acme, globex, landscape):
    client = staff_of(acme)
    page = client.get("/admin/").content.decode()
    assert figure(page, "healthy")[1] == "1" and figure(page, "failing")[1] == "1"
    assert figure(page, "active-sessions")[1] == "1" and figure(page, "agent-runs-going")[1] == "1"
    assert "globex" not in page and "Tool calls, last 24 hours: 11 calls, 5 failed or refused" in page
    assert 'id="console-platform"' not in page  # readiness, limits and keys are the operators'
    asked = client.get(f"/admin/?organization={globex.pk}").content.decode()
    assert "globex-secret-server" not in asked and figure(asked, "healthy")[1] == "1"


def test_each_figure_links_to_the_list_behind_it(acme, landscape):
    client = staff_of(acme)
    page = client.get("/admin/").content.decode()
    failing = client.get(figure(page, "failing")[0])
    assert failing.status_code == 200
    listed = failing.content.decode()
    assert "acme-broken" in listed and "acme-tools" not in listed
    healthy = client.get(figure(page, "healthy")[0]).content.decode()
    assert "acme-tools" in healthy and "acme-broken" not in healthy
    runs = client.get(figure(page, "agent-runs-going")[0])
    assert runs.status_code == 200 and "1 agent run" in runs.content.decode()
    calls_link = re.search(r'<tr data-server="\d+">\s*<td><a href="([^"]+)">acme-tools', page).group(1)
    calls = client.get(calls_link.replace("&amp;", "&"))
    assert calls.status_code == 200 and "7 audit events" in calls.content.decode()
    waiting = client.get(figure(page, "events-waiting-to-be-chained")[0])
    assert waiting.status_code == 200


def test_the_dashboard_costs_the_same_queries_whatever_it_shows(operator, acme, globex, landscape):
    client = signed_in("operator@platform.test")
    client.get("/admin/")  # the session's first request records the operator's crossing
    with CaptureQueriesContext(connection) as few:
        assert client.get("/admin/").status_code == 200
    for i in range(8):
        server(acme if i % 2 else globex, f"more-{i}", status="unhealthy", calls=2, failures=1)
    with CaptureQueriesContext(connection) as many:
        assert client.get("/admin/").status_code == 200
    assert len(many.captured_queries) == len(few.captured_queries), [q["sql"][:120] for q in many.captured_queries]


def test_verifying_a_chain_from_the_console_is_audited_and_scoped(acme, globex, landscape):
    client = staff_of(acme)
    assert client.post(f"/admin/console/verify/{globex.pk}/").status_code == 404  # not theirs
    response = client.post(f"/admin/console/verify/{acme.pk}/", follow=True)
    assert "the audit chain verifies" in response.content.decode()
    with scoping.organization_scope(acme):
        event = AuditEvent.objects.filter(action="audit.chain.verify").get()
    assert event.outcome == "success" and event.actor_label == "staff@acme.test" and event.details["checked"] > 0
    with scoping.organization_scope(globex):
        assert not AuditEvent.objects.filter(action="audit.chain.verify").exists()
    page = client.get("/admin/").content.decode()
    assert "(success)" in figure(page, "last-verification")[1]


def test_exporting_a_time_range_streams_that_organizations_events_and_is_audited(acme, globex, landscape):
    client = staff_of(acme)
    now = timezone.now()
    since, until = (
        (now - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S"),
        (now + timedelta(minutes=1)).strftime("%Y-%m-%d %H:%M:%S"),
    )
    response = client.get("/admin/console/audit-export/", {"organization": acme.pk, "since": since, "until": until,
                                                            "action": "mcp.tool.call", "format": "jsonl"})  # fmt: skip
    assert response.status_code == 200 and response["Content-Type"] == "application/jsonl"
    lines = [json.loads(line) for line in streamed(response).splitlines()]
    assert len(lines) == 11 and {line["action"] for line in lines} == {"mcp.tool.call"}
    with scoping.organization_scope(acme):
        assert AuditEvent.objects.filter(action="audit.events.export", details__via="admin").count() == 1
    refused = client.get("/admin/console/audit-export/", {"organization": globex.pk, "since": since, "until": until,
                                                           "format": "jsonl"})  # fmt: skip
    assert refused.status_code == 200 and "Select a valid choice" in refused.content.decode()
    backwards = client.get("/admin/console/audit-export/", {"organization": acme.pk, "since": until, "until": since,
                                                             "format": "csv"})  # fmt: skip
    assert "Must not be before since." in backwards.content.decode()


# Rows made by the platform, never added by hand (read-only records, or made through a flow).
NOT_ADDED = {"audit.auditevent", "oauth.oauthtoken", "mcp.toolpin", "sessions_app.systemprompt", "sessions_app.agentsession",
             "sessions_app.agentrun"}  # fmt: skip

# Models only operators manage: staff get 403 on every page of theirs.
OPERATORS_ONLY = {
    "tenants.user", "mcp.stdiotemplate", "auth.group", "django_celery_beat.periodictask",
    "django_celery_beat.intervalschedule", "django_celery_beat.crontabschedule", "django_celery_beat.solarschedule",
    "django_celery_beat.clockedschedule", "social_django.association", "social_django.nonce",
    "social_django.usersocialauth",
}  # fmt: skip


def test_every_admin_page_answers_as_it_should_for_operators_and_staff(operator, acme, globex, landscape):
    operator_client, staff_client = signed_in("operator@platform.test"), staff_of(acme)
    globex_server = landscape["globex-secret-server"]
    walked = 0
    for model, model_admin in admin.site._registry.items():
        label = model._meta.label_lower
        base = f"/admin/{model._meta.app_label}/{model._meta.model_name}/"
        with scoping.dangerously_all_organizations(reason="test", record=False):
            any_row = model._default_manager.order_by("pk").first()
        # Operators: every list and every row's page; the add page where adding is allowed at all.
        assert operator_client.get(base).status_code == 200, label
        assert operator_client.get(f"{base}add/").status_code == (403 if label in NOT_ADDED else 200), label
        if any_row is not None:
            assert operator_client.get(f"{base}{any_row.pk}/change/").status_code == 200, label
        # Staff: 403 where the model is the operators'; otherwise their rows, and another
        # organization's row is not found (404).
        listed = staff_client.get(base)
        if label in OPERATORS_ONLY:
            assert listed.status_code == 403, label
            assert staff_client.get(f"{base}add/").status_code == 403, label
            if any_row is not None:
                assert staff_client.get(f"{base}{any_row.pk}/change/").status_code in (403, 404), label
        else:
            assert listed.status_code == 200, label
            assert "globex" not in listed.content.decode().lower(), label
            expected_add = 403 if label in NOT_ADDED or label == "tenants.organization" else 200
            assert staff_client.get(f"{base}add/").status_code == expected_add, label
            with scoping.dangerously_all_organizations(reason="test", record=False):
                own = _row_of(model, acme)
                foreign = _row_of(model, globex)
            if own is not None:
                assert staff_client.get(f"{base}{own.pk}/change/").status_code == 200, label
            if foreign is not None:
                assert staff_client.get(f"{base}{foreign.pk}/change/").status_code == 404, label
        walked += 1
    assert walked >= 20
    assert staff_client.get(f"/admin/mcp/mcpconfiguration/{globex_server.pk}/change/").status_code == 404
    assert staff_client.get(f"/admin/mcp/mcpconfiguration/{globex_server.pk}/delete/").status_code == 404
    assert staff_client.get(f"/admin/mcp/mcpconfiguration/{globex_server.pk}/history/").status_code == 404


def _row_of(model, organization):
    """A row of `model` belonging to `organization` (the organization itself for Organization)."""
    if model._meta.label_lower == "tenants.organization":
        return organization
    if not any(field.name == "organization" for field in model._meta.fields):
        return None
    return model._default_manager.filter(organization=organization).order_by("pk").first()
