"""Idempotency-Key on the POSTs that create (tenants.idempotency), on real PostgreSQL with row-level
security: the management plane's creates, and a message on the data plane."""

import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from agentapi.celery import app as celery_app
from mcp.models import MCPConfiguration
from sessions_app.models import AgentMessage, AgentRun, AgentSession
from tenants import idempotency, scoping
from tenants.models import APIKey, IdempotencyRecord
from tests.conftest import Api, committed, error_of, make_key
from tests.mcp.conftest import mcp_settings  # noqa: F401 (a fixture: loopback servers allowed)

pytestmark = committed

KEYS = "/api/v1/api-keys/"
SESSIONS = "/api/v1/sessions/"


@pytest.fixture(autouse=True)
def no_queued_runs(mcp_settings):  # noqa: F811
    yield
    # The messages' runs were queued for a worker no test here starts: gone, not left to another
    # module's worker.
    celery_app.control.purge()


def records(organization) -> list[IdempotencyRecord]:
    with scoping.organization_scope(organization):
        return list(IdempotencyRecord.objects.order_by("id"))


def count(organization, model, **filters) -> int:
    with scoping.organization_scope(organization):
        return model.objects.filter(**filters).count()


def test_a_retried_api_key_creation_answers_the_first_key_and_creates_nothing(alice_api, acme):
    first = alice_api.post(KEYS, {"name": "ci"}, **{"Idempotency-Key": "create-ci-key-1"})
    assert first.status_code == 201, first.content
    assert "Idempotent-Replayed" not in first
    again = alice_api.post(KEYS, {"name": "ci"}, **{"Idempotency-Key": "create-ci-key-1"})
    assert again.status_code == 201 and again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json() and first.json()["key"].startswith("aak_")
    assert count(acme, APIKey, name="ci") == 1
    # The answer is kept sealed: the new key is nowhere in clear in the database.
    [record] = records(acme)
    assert record.status == 201 and record.response.startswith("e1:")
    assert first.json()["key"] not in record.response
    # Without the header, the same request creates again (the header is the client's choice).
    assert alice_api.post(KEYS, {"name": "ci"}).status_code == 201
    assert count(acme, APIKey, name="ci") == 2


def test_the_same_key_with_another_request_is_422_and_changes_nothing(alice_api, acme):
    assert alice_api.post(KEYS, {"name": "one"}, **{"Idempotency-Key": "k-1"}).status_code == 201
    other = alice_api.post(KEYS, {"name": "two"}, **{"Idempotency-Key": "k-1"})
    assert other.status_code == 422 and error_of(other)["code"] == "idempotency_key_reused"
    elsewhere = alice_api.post("/api/v1/mcp/configurations/", {"name": "x", "url": "http://127.0.0.1:9/mcp"},
                               **{"Idempotency-Key": "k-1"})  # fmt: skip
    assert elsewhere.status_code == 422
    assert count(acme, APIKey, name="two") == 0 and count(acme, MCPConfiguration) == 0


def test_a_failed_request_keeps_no_claim_so_its_retry_is_made_for_real(alice_api, acme):
    refused = alice_api.post(KEYS, {"name": ""}, **{"Idempotency-Key": "k-2"})
    assert refused.status_code == 400 and "Idempotent-Replayed" not in refused
    assert records(acme) == []
    # The same key, the corrected request: created.
    assert alice_api.post(KEYS, {"name": "fixed"}, **{"Idempotency-Key": "k-2"}).status_code == 201


def test_keys_are_each_users_own_and_each_organizations_own(alice_api, bob, charlie_api, acme, globex):
    bob_api = Api(make_key(bob))
    for api in (alice_api, bob_api, charlie_api):
        response = api.post("/api/v1/mcp/configurations/", {"name": "mine", "url": "http://127.0.0.1:9/mcp"},
                            **{"Idempotency-Key": "shared-key"})  # fmt: skip
        assert response.status_code == 201, response.content
        assert "Idempotent-Replayed" not in response
    assert count(acme, MCPConfiguration, name="mine") == 2 and count(globex, MCPConfiguration, name="mine") == 1
    assert len(records(acme)) == 2 and len(records(globex)) == 1


@pytest.mark.parametrize("value", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_a_malformed_key_is_400(alice_api, acme, value):
    response = alice_api.post(KEYS, {"name": "k"}, **{"Idempotency-Key": value})
    assert response.status_code == 400 and error_of(response)["code"] == "idempotency_key_invalid"
    assert count(acme, APIKey, name="k") == 0


def test_a_structured_field_string_key_is_the_same_key(alice_api, acme):
    assert alice_api.post(KEYS, {"name": "sf"}, **{"Idempotency-Key": '"abc-123"'}).status_code == 201
    again = alice_api.post(KEYS, {"name": "sf"}, **{"Idempotency-Key": "abc-123"})
    assert again.status_code == 201 and again["Idempotent-Replayed"] == "true"


def test_two_requests_with_one_key_at_once_create_once_and_answer_alike(alice, acme):
    key = make_key(alice)
    answers = []

    def create():
        try:
            response = Api(key).post("/api/v1/mcp/configurations/", {"name": "race", "url": "http://127.0.0.1:9/m"},
                                     **{"Idempotency-Key": "race-1"})  # fmt: skip
            answers.append((response.status_code, response.json()))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(answers) == 4 and {status for status, _ in answers} == {201}
    assert len({body["id"] for _, body in answers}) == 1
    assert count(acme, MCPConfiguration, name="race") == 1


def test_a_retried_session_creation_answers_the_same_session_and_token(alice_api, acme):
    first = alice_api.post(SESSIONS, {"name": "s"}, **{"Idempotency-Key": "session-1"})
    assert first.status_code == 201, first.content
    again = alice_api.post(SESSIONS, {"name": "s"}, **{"Idempotency-Key": "session-1"})
    assert again.json() == first.json() and again["Idempotent-Replayed"] == "true"
    assert count(acme, AgentSession) == 1


def test_an_expired_key_is_a_new_request_and_the_purge_removes_expired_records(alice_api, acme, settings):
    assert alice_api.post(KEYS, {"name": "old"}, **{"Idempotency-Key": "k-old"}).status_code == 201
    with scoping.organization_scope(acme):
        IdempotencyRecord.objects.update(created_at=timezone.now() - timedelta(days=2))
    again = alice_api.post(KEYS, {"name": "old"}, **{"Idempotency-Key": "k-old"})
    assert again.status_code == 201 and "Idempotent-Replayed" not in again
    assert count(acme, APIKey, name="old") == 2
    assert alice_api.post(KEYS, {"name": "older"}, **{"Idempotency-Key": "k-older"}).status_code == 201
    with scoping.organization_scope(acme):
        IdempotencyRecord.objects.filter(key="k-older").update(created_at=timezone.now() - timedelta(days=2))
    from tenants.tasks import idempotency_records_purge

    assert idempotency_records_purge() == 1
    assert [record.key for record in records(acme)] == ["k-old"]


# -- a message, on the data plane ------------------------------------------------------------------


def open_session(api) -> dict:
    agent = api.post("/api/v1/agents/", {"name": "m", "kind": "openai", "base_url": "http://127.0.0.1:9/v1",
                                         "model": "double-1", "api_key": "sk-idempotency-test-0123456789"})  # fmt: skip
    assert agent.status_code == 201, agent.content
    session = api.post(SESSIONS, {"agent": agent.json()["id"]})
    assert session.status_code == 201, session.content
    return session.json()


def test_a_retried_message_is_sent_once_even_while_its_run_goes(alice_api, acme):
    session = open_session(alice_api)
    path = f"{SESSIONS}{session['id']}/messages/"
    first = alice_api.post(path, {"content": "hello"}, **{"Idempotency-Key": "msg-1"})
    assert first.status_code == 202, first.content
    # Its run is still going (no worker takes it here): the retry is its answer, not session_busy.
    again = alice_api.post(path, {"content": "hello"}, **{"Idempotency-Key": "msg-1"})
    assert again.status_code == 202 and again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert count(acme, AgentMessage, session_id=session["id"]) == 1 and count(acme, AgentRun) == 1
    [record] = records(acme)
    assert record.status == 202 and record.resource == f"sessions_app.agentrun:{first.json()['run']['id']}"
    # Another message with that key is 422; without it, the session is busy as ever.
    other = alice_api.post(path, {"content": "something else"}, **{"Idempotency-Key": "msg-1"})
    assert other.status_code == 422 and error_of(other)["code"] == "idempotency_key_reused"
    busy = alice_api.post(path, {"content": "another"}, **{"Idempotency-Key": "msg-2"})
    assert busy.status_code == 409 and error_of(busy)["code"] == "session_busy"
    assert [record.key for record in records(acme)] == ["msg-1"]  # the refused one kept no claim
    assert count(acme, AgentMessage, session_id=session["id"]) == 1


def test_a_message_whose_answer_was_never_written_is_answered_from_what_was_stored(alice_api, acme):
    # The web process died between storing the message (with its claim) and writing the answer.
    session = open_session(alice_api)
    path = f"{SESSIONS}{session['id']}/messages/"
    first = alice_api.post(path, {"content": "hello"}, **{"Idempotency-Key": "msg-crash"})
    assert first.status_code == 202
    with scoping.organization_scope(acme):
        IdempotencyRecord.objects.update(status=None, response="")
    again = alice_api.post(path, {"content": "hello"}, **{"Idempotency-Key": "msg-crash"})
    assert again.status_code == 202 and again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json()
    assert count(acme, AgentMessage, session_id=session["id"]) == 1


def test_another_organizations_session_is_404_with_a_key_and_keeps_no_claim(alice_api, charlie_api, acme, globex):
    session = open_session(alice_api)
    response = charlie_api.post(f"{SESSIONS}{session['id']}/messages/", {"content": "hi"},
                                **{"Idempotency-Key": "msg-x"})  # fmt: skip
    assert response.status_code == 404
    assert records(globex) == [] and records(acme) == []
    bad = alice_api.post(f"{SESSIONS}{session['id']}/messages/", {"content": "hi"}, **{"Idempotency-Key": "\u00e9"})
    assert bad.status_code == 400 and error_of(bad)["code"] == "idempotency_key_invalid"


def test_the_fingerprint_is_the_parsed_body_not_its_spelling():
    assert idempotency.fingerprint("POST", "/p/", {"a": 1, "b": [1, 2]}) == idempotency.fingerprint(
        "POST", "/p/", {"b": [1, 2], "a": 1}
    )
    assert idempotency.fingerprint("POST", "/p/", {"a": 1}) != idempotency.fingerprint("POST", "/q/", {"a": 1})


def test_a_busy_session_answers_409_however_often_it_is_asked(alice_api, acme):
    # Found by the load suite: after five failed units on one data-plane connection, psycopg had
    # prepared the ROLLBACK itself, the cleanup's DEALLOCATE ALL dropped it, and the sixth was a 500.
    session = open_session(alice_api)
    path = f"{SESSIONS}{session['id']}/messages/"
    assert alice_api.post(path, {"content": "first"}).status_code == 202
    statuses = [alice_api.post(path, {"content": f"again {i}"}).status_code for i in range(12)]
    assert statuses == [409] * 12
