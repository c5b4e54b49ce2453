"""Agent backends through the API on real PostgreSQL: who manages which (the organization's, the
platform's), the key sealed and write-only (never in a response, an audit record or the admin),
URLs checked against the outbound rules, settings checked, and a session opened with one."""

import pytest

from audit.models import AuditEvent
from sessions_app.models import AgentBackend
from tenants import scoping
from tests.conftest import error_of

pytestmark = pytest.mark.django_db
AGENTS = "/api/v1/agents/"
KEY = "sk-test-0123456789abcdef-never-shown"


@pytest.fixture(autouse=True)
def loopback(settings):
    from agentapi.settings.base import parse_networks

    settings.OUTBOUND_ALLOWED_NETWORKS = parse_networks(["127.0.0.0/8"])


def create(api, **fields):
    body = {"name": "gpt", "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "gpt-x", **fields}
    return api.post(AGENTS, body)


def test_owners_and_admins_manage_the_organizations_backends_and_members_only_read(alice_api, bob_api, acme):
    created = create(alice_api, api_key=KEY, settings={"temperature": 0.2, "max_steps": 5})
    assert created.status_code == 201, created.content
    backend = created.json()
    assert backend["has_api_key"] is True and backend["platform"] is False and KEY not in created.content.decode()
    assert backend["settings"] == {"temperature": 0.2, "max_output_tokens": None, "max_steps": 5,
                                   "run_timeout_seconds": 600}  # fmt: skip
    assert bob_api.get(f"{AGENTS}{backend['id']}/").json()["name"] == "gpt"  # members see it, to choose it
    for attempt in (create(bob_api, name="mine"), bob_api.patch(f"{AGENTS}{backend['id']}/", {"model": "other"}),
                    bob_api.delete(f"{AGENTS}{backend['id']}/")):  # fmt: skip
        assert attempt.status_code == 403 and error_of(attempt)["code"] == "permission_denied"
    changed = alice_api.patch(f"{AGENTS}{backend['id']}/", {"model": "gpt-y", "api_key": "sk-another-secret-key"})
    assert changed.status_code == 200 and changed.json()["model"] == "gpt-y"
    with scoping.organization_scope(acme):
        stored = AgentBackend.objects.get(pk=backend["id"])
        assert stored.api_key() == "sk-another-secret-key" and "sk-another" not in stored.api_key_sealed
        assert stored.revision == 2
        events = list(AuditEvent.objects.filter(action__startswith="agent.").order_by("id"))
    assert [e.action for e in events] == ["agent.create", "agent.update"]
    assert events[1].details == {"changed": ["api_key", "model"]}
    assert all(KEY not in str(e.details) and "sk-another" not in str(e.details) for e in events)
    assert alice_api.delete(f"{AGENTS}{backend['id']}/").status_code == 204


def test_the_platforms_backends_are_the_operators_and_every_organizations(operator_api, alice_api, charlie_api):
    refused = create(alice_api, name="shared", platform=True)
    assert refused.status_code == 403
    made = create(operator_api, name="shared", platform=True, api_key=KEY)
    assert made.status_code == 201 and made.json()["platform"] is True
    for api in (alice_api, charlie_api):
        assert [b["name"] for b in api.get(AGENTS).json()["results"]] == ["shared"]
    edit = alice_api.patch(f"{AGENTS}{made.json()['id']}/", {"enabled": False})
    assert edit.status_code == 403


def test_bad_backends_are_refused_with_the_field_named(alice_api, settings):
    cases = [
        ({"base_url": "ftp://example.com/"}, "base_url"),
        ({"kind": "anthropic", "model": ""}, "model"),
        ({"settings": {"temperature": 3}}, "settings"),
        ({"settings": {"max_steps": 2.5}}, "settings"),
        ({"settings": {"max_steps": True}}, "settings"),
        ({"settings": {"shell": "rm -rf /"}}, "settings"),
        ({"settings": []}, "settings"),
        ({"kind": "gemini"}, "kind"),
    ]
    for fields, field in cases:
        response = create(alice_api, **fields)
        assert response.status_code == 400, (fields, response.content)
        assert field in error_of(response)["details"], (fields, response.content)
    settings.OUTBOUND_ALLOWED_NETWORKS = []
    private = create(alice_api, base_url="http://10.0.0.8/v1")
    assert private.status_code == 400 and "base_url" in error_of(private)["details"]
    assert create(alice_api).status_code == 400  # loopback is private too, once it is not allowed


def test_a_name_is_unique_in_its_organization(alice_api, charlie_api):
    assert create(alice_api).status_code == 201
    again = create(alice_api)
    assert again.status_code == 409 and error_of(again)["code"] == "conflict"
    assert create(charlie_api).status_code == 201  # another organization's may share it


def test_a_session_opens_with_a_backend_it_may_use(alice_api, bob_api, charlie_api):
    backend = create(alice_api).json()
    session = bob_api.post("/api/v1/sessions/", {"agent": backend["id"]})
    assert session.status_code == 201 and session.json()["agent"] == backend["id"]
    foreign = create(charlie_api, name="theirs").json()
    refused = bob_api.post("/api/v1/sessions/", {"agent": foreign["id"]})
    assert refused.status_code == 400 and "agent" in error_of(refused)["details"]
    alice_api.patch(f"{AGENTS}{backend['id']}/", {"enabled": False})
    disabled = bob_api.post("/api/v1/sessions/", {"agent": backend["id"]})
    assert disabled.status_code == 400
    assert bob_api.post("/api/v1/sessions/", {}).json()["agent"] is None  # tools only


@pytest.fixture(scope="module")
def double():
    from tests.sessions.model_doubles import ModelDouble

    return ModelDouble()


@pytest.mark.parametrize("kind, path", [("openai", "/v1"), ("anthropic", ""), ("agentapi", "/agentapi")])
def test_the_test_action_sends_one_tiny_request_and_never_shows_the_key(kind, path, alice_api, bob_api, double, acme):
    double.requests.clear()
    double.fail_with = None
    backend = create(alice_api, name=kind, kind=kind, base_url=double.url + path, model="m-1", api_key=KEY).json()
    assert bob_api.post(f"{AGENTS}{backend['id']}/test/").status_code == 403
    tested = alice_api.post(f"{AGENTS}{backend['id']}/test/")
    assert tested.status_code == 200, tested.content
    result = tested.json()
    assert result["ok"] is True and result["latency_ms"] > 0 and KEY not in tested.content.decode()
    assert result["reply"] == ("status: stable" if kind == "agentapi" else "OK")
    (sent,) = double.requests
    if kind == "openai":
        assert sent["headers"]["authorization"] == f"Bearer {KEY}" and sent["body"]["model"] == "m-1"
    elif kind == "anthropic":
        # This Anthropic SDK sends the key as a bearer token; older ones sent x-api-key.
        assert KEY in (
            sent["headers"].get("x-api-key"),
            sent["headers"].get("authorization", "").removeprefix("Bearer "),
        )
        assert sent["body"]["max_tokens"] == 16
    double.fail_with = 401
    failed = alice_api.post(f"{AGENTS}{backend['id']}/test/").json()
    assert failed["ok"] is False and failed["error"]["code"] == "agent_unreachable"
    assert KEY not in str(failed) and "double says no" not in str(failed)
    double.fail_with = None
    with scoping.organization_scope(acme):
        outcomes = list(AuditEvent.objects.filter(action="agent.test").values_list("outcome", flat=True).order_by("id"))
    assert outcomes[-2:] == ["success", "failure"]


def test_the_admin_tests_a_backend_and_staff_see_only_their_organizations(alice, alice_api, charlie_api, double, acme):
    from django.test import Client

    from tenants.models import User

    double.fail_with = None
    mine = create(alice_api, name="mine", base_url=double.url + "/v1", api_key=KEY).json()
    create(charlie_api, name="theirs")
    User.objects.filter(email="alice@acme.test").update(is_staff=True)
    client = Client()
    client.force_login(User.objects.get(email="alice@acme.test"))
    changelist = "/admin/sessions_app/agentbackend/"
    page = client.get(changelist).content.decode()
    assert "mine" in page and "theirs" not in page
    detail = client.get(f"{changelist}{mine['id']}/change/").content.decode()
    assert KEY not in detail and "sealed" not in detail.lower()
    answered = client.post(changelist, {"action": "test_backends", "_selected_action": [mine["id"]]}, follow=True)
    assert "mine: answered in" in answered.content.decode().lower()
    with scoping.organization_scope(acme):
        assert AuditEvent.objects.filter(action="agent.test", outcome="success").exists()
