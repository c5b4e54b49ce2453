from audit.models import AuditEvent
from tenants import scoping
from tenants.models import Membership
from tests.conftest import Api, error_of, make_key, make_member


def test_members_list_their_organization(bob_api, alice):
    emails = [item["user"]["email"] for item in bob_api.get("/api/v1/members/").json()["results"]]
    assert sorted(emails) == ["alice@acme.test", "bob@acme.test"]


def test_an_admin_adds_a_member_by_email(alice_api, acme):
    response = alice_api.post("/api/v1/members/", {"email": "New.Person@Acme.test", "role": "admin"})
    assert response.status_code == 201
    assert response.json()["user"]["email"] == "new.person@acme.test"
    assert response.json()["role"] == "admin"
    duplicate = alice_api.post("/api/v1/members/", {"email": "new.person@acme.test"})
    assert duplicate.status_code == 409
    assert error_of(duplicate)["code"] == "conflict"


def test_a_user_may_belong_to_several_organizations(alice_api, charlie_api, globex):
    alice_api.post("/api/v1/members/", {"email": "shared@example.test"})
    charlie_api.post("/api/v1/members/", {"email": "shared@example.test", "role": "admin"})
    with scoping.dangerously_all_organizations(reason="test", record=False):
        assert Membership.objects.filter(user__email="shared@example.test").count() == 2


def test_members_cannot_manage_members(bob_api, alice):
    response = bob_api.post("/api/v1/members/", {"email": "x@acme.test"})
    assert response.status_code == 403
    assert bob_api.patch(f"/api/v1/members/{alice.pk}/", {"role": "member"}).status_code == 403
    assert bob_api.delete(f"/api/v1/members/{alice.pk}/").status_code == 403


def test_only_an_owner_makes_or_changes_an_owner(acme, alice):
    admin = make_member(acme, "admin@acme.test", "admin")
    admin_api = Api(make_key(admin))
    assert admin_api.post("/api/v1/members/", {"email": "o@acme.test", "role": "owner"}).status_code == 403
    assert admin_api.patch(f"/api/v1/members/{alice.pk}/", {"role": "member"}).status_code == 403
    assert admin_api.delete(f"/api/v1/members/{alice.pk}/").status_code == 403


def test_the_last_owner_cannot_be_demoted_or_removed(alice_api, alice):
    response = alice_api.patch(f"/api/v1/members/{alice.pk}/", {"role": "admin"})
    assert response.status_code == 409
    assert error_of(response)["code"] == "last_owner"
    assert alice_api.delete(f"/api/v1/members/{alice.pk}/").status_code == 409


def test_removing_a_member_removes_their_keys_and_is_audited(alice_api, bob, acme):
    key = make_key(bob)
    assert alice_api.delete(f"/api/v1/members/{bob.pk}/").status_code == 204
    assert Api(key).get("/api/v1/me/").status_code == 401
    with scoping.organization_scope(acme):
        event = AuditEvent.objects.get(action="tenants.membership.delete")
    assert event.target_id == str(bob.pk) and event.actor_label == "alice@acme.test"


def test_it_validates_roles_and_emails(alice_api, bob):
    assert error_of(alice_api.post("/api/v1/members/", {"email": "not-an-email"}))["code"] == "invalid"
    response = alice_api.patch(f"/api/v1/members/{bob.pk}/", {"role": "emperor"})
    assert response.status_code == 400 and "role" in error_of(response)["details"]


def test_me_describes_the_caller(alice_api, alice):
    body = alice_api.get("/api/v1/me/").json()
    assert body["user"]["email"] == "alice@acme.test"
    assert body["organization"]["slug"] == "acme"
    assert body["role"] == "owner"
    assert body["authentication"] == "api_key"
    assert body["api_key_prefix"].startswith("aak_")
    assert body["is_operator"] is False
