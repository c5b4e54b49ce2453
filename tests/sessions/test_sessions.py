"""Agent sessions through the API on real PostgreSQL: opening (servers, the prompt snapshot, the
token shown once), who sees which, the per-user limit under concurrency, closing."""

import threading

import pytest

from audit.models import AuditEvent
from sessions_app.models import AgentSession
from sessions_app.services import hash_session_token
from tenants import scoping
from tests.conftest import Api, committed, error_of, make_key
from tests.sessions.test_prompts import create

pytestmark = pytest.mark.django_db

SESSIONS = "/api/v1/sessions/"


@pytest.fixture(autouse=True)
def loopback_servers(settings):
    from agentapi.settings.base import parse_networks

    settings.OUTBOUND_ALLOWED_NETWORKS = parse_networks(["127.0.0.0/8"])  # nothing is dialled here


def configuration(api, name, **fields):
    response = api.post("/api/v1/mcp/configurations/", {"name": name, "url": f"http://127.0.0.1:9/{name}", **fields})
    assert response.status_code == 201, response.content
    return response.json()["id"]


def test_a_session_starts_with_every_usable_server_and_a_snapshot_of_the_prompt(alice_api, bob_api, acme):
    shared = configuration(alice_api, "shared")
    mine = configuration(bob_api, "bobs")
    configuration(alice_api, "off", enabled=False)
    layer = create(
        alice_api, "organization", "style", "Help {{ user.name or user.email }} on {{ session.metadata.team }}."
    )
    response = bob_api.post(SESSIONS, {"name": "support", "metadata": {"team": "billing"}})
    assert response.status_code == 201, response.content
    session = response.json()
    assert session["status"] == "active" and session["agent"] is None
    assert session["mcp_configurations"] == [shared, mine]
    assert session["system_prompt"] == "Help bob@acme.test on billing."
    assert session["prompt_layers"] == [{"id": layer["id"], "scope": "organization", "name": "style", "version": 1}]
    assert session["mcp_url"].endswith(f"/mcp/sessions/{session['id']}/")
    token = session["mcp_token"]
    assert token.startswith("ast_")
    with scoping.organization_scope(acme):
        stored = AgentSession.objects.get(pk=session["id"])
        assert stored.mcp_token_hash == hash_session_token(token) and token not in str(vars(stored))
        event = AuditEvent.objects.get(action="session.create")
    assert event.details["mcp_configurations"] == [shared, mine] and token not in str(event.details)
    # A snapshot: editing the layer later does not change the session.
    alice_api.patch(f"/api/v1/prompts/{layer['id']}/", {"content": "Changed."})
    again = bob_api.get(f"{SESSIONS}{session['id']}/").json()
    assert again["system_prompt"] == "Help bob@acme.test on billing." and "mcp_token" not in again


def test_servers_can_be_chosen_but_only_among_the_callers_own(alice_api, bob_api, charlie_api):
    shared = configuration(alice_api, "shared")
    alices = configuration(alice_api, "alices", shared=False)
    foreign = configuration(charlie_api, "globex")
    chosen = bob_api.post(SESSIONS, {"mcp_configurations": [shared]}).json()
    assert chosen["mcp_configurations"] == [shared]
    for ids in ([alices], [foreign], [shared, 987654321]):
        response = bob_api.post(SESSIONS, {"mcp_configurations": ids})
        assert response.status_code == 400 and error_of(response)["code"] == "invalid"
    assert bob_api.post(SESSIONS, {"mcp_configurations": []}).json()["mcp_configurations"] == []


def test_members_see_their_own_sessions_and_managers_everyones(alice, alice_api, bob, bob_api):
    alices = alice_api.post(SESSIONS, {"name": "a"}).json()["id"]
    bobs = bob_api.post(SESSIONS, {"name": "b"}).json()["id"]
    assert {s["id"] for s in bob_api.get(SESSIONS).json()["results"]} == {bobs}
    assert bob_api.get(f"{SESSIONS}{alices}/").status_code == 404
    assert bob_api.delete(f"{SESSIONS}{alices}/").status_code == 404
    assert {s["id"] for s in alice_api.get(SESSIONS).json()["results"]} == {alices, bobs}
    assert {s["id"] for s in alice_api.get(f"{SESSIONS}?user={bob.user_id}").json()["results"]} == {bobs}
    assert alice_api.get(f"{SESSIONS}?user=bob").status_code == 400
    assert bob_api.get(f"{SESSIONS}not-a-uuid/").status_code == 404


def test_closing_is_audited_and_frees_a_place(alice_api, acme):
    acme.settings = {"max_sessions_per_user": 1}
    acme.save()
    first = alice_api.post(SESSIONS, {}).json()["id"]
    refused = alice_api.post(SESSIONS, {})
    assert refused.status_code == 409 and error_of(refused)["code"] == "session_limit_reached"
    assert alice_api.delete(f"{SESSIONS}{first}/").status_code == 204
    assert alice_api.get(f"{SESSIONS}{first}/").json()["status"] == "closed"
    assert alice_api.delete(f"{SESSIONS}{first}/").status_code == 204  # closing again changes nothing
    assert alice_api.post(SESSIONS, {}).status_code == 201
    with scoping.organization_scope(acme):
        assert AuditEvent.objects.filter(action="session.closed").count() == 1


@committed
def test_twenty_concurrent_creates_at_a_limit_of_three_make_exactly_three(alice, acme):
    acme.settings = {"max_sessions_per_user": 3}
    acme.save()
    key = make_key(alice)
    statuses = []
    start = threading.Barrier(20)

    def open_one():
        api = Api(key)
        start.wait()
        statuses.append(api.post(SESSIONS, {}).status_code)

    threads = [threading.Thread(target=open_one) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(statuses) == [201] * 3 + [409] * 17
    with scoping.organization_scope(acme):
        assert AgentSession.objects.filter(user_id=alice.user_id).count() == 3


@pytest.mark.parametrize(
    "body",
    [{"mcp_configurations": "all"}, {"mcp_configurations": [0]}, {"metadata": []}, {"variables": "x"},
     {"name": "x" * 201}],
)  # fmt: skip
def test_bad_input_is_a_clear_400(bob_api, body):
    response = bob_api.post(SESSIONS, body)
    assert response.status_code == 400 and error_of(response)["code"]


def test_a_session_past_its_time_reads_expired_and_no_longer_counts(alice_api, acme):
    from datetime import timedelta

    from django.utils import timezone

    acme.settings = {"max_sessions_per_user": 1}
    acme.save()
    old = alice_api.post(SESSIONS, {}).json()["id"]
    with scoping.organization_scope(acme):
        AgentSession.objects.filter(pk=old).update(expires_at=timezone.now() - timedelta(seconds=1))
    assert alice_api.get(f"{SESSIONS}{old}/").json()["status"] == "expired"
    assert alice_api.post(SESSIONS, {}).status_code == 201
