from datetime import timedelta

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from audit.models import AuditEvent
from tenants import scoping
from tenants.models import APIKey, hash_api_key
from tests.conftest import Api, error_of, make_key


def test_it_shows_the_key_once_and_stores_only_its_hash(alice_api, bob, acme):
    response = alice_api.post("/api/v1/api-keys/", {"name": "ci", "member": bob.pk})
    assert response.status_code == 201
    body = response.json()
    key = body["key"]
    assert key.startswith(body["prefix"] + "_")
    assert body["user"]["email"] == "bob@acme.test"
    with scoping.organization_scope(acme):
        row = APIKey.objects.get(pk=body["id"])
    assert row.hashed_key == hash_api_key(key)
    assert key not in str(row.__dict__)
    # Never again: neither in the detail nor in the list.
    assert "key" not in alice_api.get(f"/api/v1/api-keys/{body['id']}/").json()
    assert key not in alice_api.get("/api/v1/api-keys/").content.decode()
    assert Api(key).get("/api/v1/me/").json()["user"]["email"] == "bob@acme.test"


def test_it_refuses_a_revoked_key(alice_api, alice):
    key = make_key(alice, "to-revoke")
    key_id = alice_api.get("/api/v1/api-keys/").json()["results"][0]["id"]
    assert Api(key).get("/api/v1/me/").status_code == 200
    assert alice_api.delete(f"/api/v1/api-keys/{key_id}/").status_code == 204
    response = Api(key).get("/api/v1/me/")
    assert response.status_code == 401
    assert error_of(response)["code"] == "api_key_revoked"
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_it_refuses_an_expired_key(alice, acme):
    key = make_key(alice, expires_at=timezone.now() + timedelta(seconds=30))
    assert Api(key).get("/api/v1/me/").status_code == 200
    with scoping.organization_scope(acme):
        APIKey.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    response = Api(key).get("/api/v1/me/")
    assert response.status_code == 401
    assert error_of(response)["code"] == "api_key_expired"


def test_it_refuses_an_expiry_in_the_past(alice_api):
    response = alice_api.post("/api/v1/api-keys/", {"name": "x", "expires_at": "2001-01-01T00:00:00Z"})
    assert response.status_code == 400
    assert "expires_at" in error_of(response)["details"]


def test_it_refuses_an_unknown_key_and_records_the_failure(db):
    response = Api("aak_000000000000_notakey").get("/api/v1/me/")
    assert response.status_code == 401
    assert error_of(response)["code"] == "invalid_api_key"
    with scoping.dangerously_all_organizations(reason="test", record=False):
        event = AuditEvent.objects.get(action="tenants.authentication.fail")
    assert event.outcome == "failure" and event.details["reason"] == "invalid_api_key"
    assert event.organization_id is None


def test_it_records_last_use_without_writing_on_every_request(alice, acme):
    key = make_key(alice)
    Api(key).get("/api/v1/me/")
    with scoping.organization_scope(acme):
        first = APIKey.objects.get().last_used_at
    assert first is not None
    with CaptureQueriesContext(connection) as queries:
        Api(key).get("/api/v1/me/")
    assert not [q for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    with scoping.organization_scope(acme):
        assert APIKey.objects.get().last_used_at == first


def test_authentication_costs_one_query(alice, acme):
    key = make_key(alice)
    Api(key).get("/api/v1/me/")  # first use writes last_used_at
    scope_statements = connection.scope_statements
    with CaptureQueriesContext(connection) as queries:
        response = Api(key).get("/api/v1/me/")
    assert response.status_code == 200
    # /me/ reads nothing beyond what authentication loaded: the single key lookup...
    selects = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
    assert len(selects) == 1, selects
    assert "tenants_apikey" in selects[0]
    # ...and the row-level security settings are set twice: for the lookup, then for the organization.
    assert connection.scope_statements - scope_statements == 2


def test_members_cannot_create_keys_but_can_revoke_their_own(bob_api, bob, alice, acme):
    response = bob_api.post("/api/v1/api-keys/", {"name": "mine"})
    assert response.status_code == 403
    assert error_of(response)["code"] == "permission_denied"
    listed = bob_api.get("/api/v1/api-keys/").json()["results"]
    assert [item["user"]["email"] for item in listed] == ["bob@acme.test"]
    alices_key_id = Api(make_key(alice)).get("/api/v1/api-keys/").json()["results"][0]["id"]
    assert bob_api.delete(f"/api/v1/api-keys/{alices_key_id}/").status_code == 404
    assert bob_api.delete(f"/api/v1/api-keys/{listed[0]['id']}/").status_code == 204


def test_it_enforces_the_organizations_key_limit(alice_api, acme):
    acme.settings = {"max_api_keys": 2}
    acme.save()
    assert alice_api.post("/api/v1/api-keys/", {"name": "two"}).status_code == 201
    response = alice_api.post("/api/v1/api-keys/", {"name": "three"})
    assert response.status_code == 409
    assert error_of(response)["code"] == "limit_reached"


def test_it_audits_creation_and_revocation_without_the_key(alice_api, acme):
    created = alice_api.post("/api/v1/api-keys/", {"name": "audited"}).json()
    alice_api.delete(f"/api/v1/api-keys/{created['id']}/")
    with scoping.organization_scope(acme):
        events = list(AuditEvent.objects.filter(target_type="tenants.apikey", target_id=str(created["id"])))
    assert sorted(e.action for e in events) == ["tenants.api_key.create", "tenants.api_key.revoke"]
    assert all(created["key"] not in str(e.details) for e in events)
    assert all(e.actor_type == "api_key" and e.actor_label == "alice@acme.test" for e in events)


def test_the_list_shows_each_key_as_its_detail_does(alice_api, bob, acme):
    alice_api.post("/api/v1/api-keys/", {"name": "a", "member": bob.pk, "expires_at": "2099-01-01T00:00:00Z"})
    revoked = alice_api.post("/api/v1/api-keys/", {"name": "b"}).json()
    alice_api.delete(f"/api/v1/api-keys/{revoked['id']}/")
    listed = alice_api.get("/api/v1/api-keys/").json()["results"]
    assert len(listed) == 3
    for item in listed:
        assert item == alice_api.get(f"/api/v1/api-keys/{item['id']}/").json()
    assert {item["status"] for item in listed} == {"active", "revoked"}
