"""The admin and the user pages: Django sessions, the organization chosen among memberships,
operators seeing every organization, staff seeing only the organizations they manage."""

import re

from django.test import Client

from audit.models import AuditEvent
from tenants import scoping
from tenants.models import APIKey, Membership, User, hash_api_key
from tests.conftest import make_key, make_member


def signed_in(email: str) -> Client:
    client = Client()
    client.force_login(User.objects.get(email=email))
    return client


def test_a_user_chooses_among_their_organizations(alice, globex):
    make_member(globex, "alice@acme.test", "member")
    client = signed_in("alice@acme.test")
    assert client.get("/api/v1/me/").json()["organization"]["slug"] == "acme"
    page = client.get("/account/organization/").content.decode()
    assert "Acme" in page and "Globex" in page
    assert client.post("/account/organization/", {"organization": globex.pk}).status_code == 302
    me = client.get("/api/v1/me/").json()
    assert (me["organization"]["slug"], me["role"], me["authentication"]) == ("globex", "member", "session")


def test_a_user_cannot_choose_an_organization_they_do_not_belong_to(alice, charlie, globex):
    client = signed_in("alice@acme.test")
    assert client.post("/account/organization/", {"organization": globex.pk}).status_code == 400
    assert client.get("/api/v1/me/").json()["organization"]["slug"] == "acme"


def test_an_operator_sees_every_organizations_keys_in_the_admin(operator, charlie, alice):
    make_key(alice, "alice-key")
    make_key(charlie, "charlie-key")
    page = signed_in("operator@platform.test").get("/admin/tenants/apikey/").content.decode()
    assert "alice-key" in page and "charlie-key" in page
    with scoping.dangerously_all_organizations(reason="test", record=False):
        assert (
            AuditEvent.objects.filter(
                action="tenants.scope.cross_organizations", details__reason="operator admin session"
            ).count()
            == 1
        )


def test_staff_see_only_the_organizations_they_manage(alice, charlie):
    User.objects.filter(email="alice@acme.test").update(is_staff=True)
    make_key(alice, "alice-key")
    charlie_key_prefix = make_key(charlie, "charlie-key")[:16]
    client = signed_in("alice@acme.test")
    page = client.get("/admin/tenants/apikey/").content.decode()
    assert "alice-key" in page and "charlie-key" not in page
    with scoping.organization_scope(charlie.organization):
        charlie_key = APIKey.objects.get(prefix=charlie_key_prefix)
    assert client.get(f"/admin/tenants/apikey/{charlie_key.pk}/change/").status_code in (302, 404)
    assert "globex" not in client.get("/admin/tenants/organization/").content.decode()
    assert client.get("/admin/tenants/user/").status_code == 403  # people are the operators' to manage


def test_plain_members_do_not_get_into_the_admin(bob):
    User.objects.filter(email="bob@acme.test").update(is_staff=True)
    page = signed_in("bob@acme.test").get("/admin/")
    assert page.status_code == 200
    assert "API keys" not in page.content.decode()


def test_a_key_made_in_the_admin_is_shown_once_and_stored_hashed(operator, alice, acme):
    client = signed_in("operator@platform.test")
    response = client.post("/admin/tenants/apikey/add/", {"membership": alice.pk, "name": "from-admin"})
    key = re.search(r'value="(aak_[^"]+)"', response.content.decode()).group(1)
    with scoping.organization_scope(acme):
        row = APIKey.objects.get(name="from-admin")
    assert row.hashed_key == hash_api_key(key)
    change_page = client.get(f"/admin/tenants/apikey/{row.pk}/change/").content.decode()
    list_page = client.get("/admin/tenants/apikey/").content.decode()
    for page in (change_page, list_page):
        assert key not in page and row.hashed_key not in page


def test_the_audit_log_is_read_only_in_the_admin(operator, acme):
    client = signed_in("operator@platform.test")
    with scoping.organization_scope(acme):
        event = AuditEvent.objects.first()
    assert client.get("/admin/audit/auditevent/").status_code == 200
    assert client.get("/admin/audit/auditevent/add/").status_code == 403
    assert client.post(f"/admin/audit/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403


def test_a_signed_in_user_without_an_organization_is_told_so(db):
    User.objects.create_user("loner@example.test", "pw")
    response = signed_in("loner@example.test").get("/api/v1/me/")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "no_organization"


def staff_admin_of(organization) -> Client:
    membership = make_member(organization, "staff@acme.test", "admin")
    User.objects.filter(pk=membership.user_id).update(is_staff=True)
    return signed_in("staff@acme.test")


def test_the_admin_adds_members_by_email_under_the_apis_rules(alice, acme):
    client = staff_admin_of(acme)
    added = client.post(
        "/admin/tenants/membership/add/", {"organization": acme.pk, "email": "New@Acme.test", "role": "member"}
    )
    assert added.status_code == 302
    with scoping.organization_scope(acme):
        assert Membership.objects.filter(user__email="new@acme.test", role="member").exists()
        assert AuditEvent.objects.filter(action="tenants.membership.create", actor_label="staff@acme.test").exists()
    refused = client.post(
        "/admin/tenants/membership/add/", {"organization": acme.pk, "email": "o@acme.test", "role": "owner"}
    )
    assert refused.status_code == 200 and "Only an owner" in refused.content.decode()


def test_a_staff_admin_cannot_demote_or_remove_an_owner_in_the_admin(alice, acme):
    client = staff_admin_of(acme)
    response = client.post(f"/admin/tenants/membership/{alice.pk}/change/", {"role": "member"})
    assert response.status_code == 200 and "Only an owner" in response.content.decode()
    assert client.post(f"/admin/tenants/membership/{alice.pk}/delete/", {"post": "yes"}).status_code == 403
    with scoping.organization_scope(acme):
        alice.refresh_from_db()
    assert alice.role == "owner"


def test_not_even_an_operator_removes_the_last_owner_in_the_admin(operator, alice):
    client = signed_in("operator@platform.test")
    assert client.post(f"/admin/tenants/membership/{alice.pk}/delete/", {"post": "yes"}).status_code == 403
    response = client.post(f"/admin/tenants/membership/{alice.pk}/change/", {"role": "admin"})
    assert "at least one owner" in response.content.decode()


def test_an_api_key_never_changes_hands_in_the_admin(operator, alice, bob, acme):
    make_key(alice, "alices")
    with scoping.organization_scope(acme):
        key = APIKey.objects.get(name="alices")
    signed_in("operator@platform.test").post(
        f"/admin/tenants/apikey/{key.pk}/change/", {"name": "renamed", "membership": bob.pk}
    )
    with scoping.organization_scope(acme):
        key.refresh_from_db()
    assert (key.name, key.membership_id) == ("renamed", alice.pk)


def test_an_operator_sets_an_organizations_rate_limits_in_the_admin(operator, acme, bob):
    import json

    client = signed_in("operator@platform.test")
    url = f"/admin/tenants/organization/{acme.pk}/change/"
    page = client.get(url).content.decode()
    assert "Rate limits" in page and "mcp per credential" in page
    form = {"slug": acme.slug, "name": acme.name, "is_active": "on", "settings": json.dumps(acme.settings or {})}
    refused = client.post(url, {**form, "rate_read_credential": "fast"})
    assert refused.status_code == 200 and "A rate is COUNT/PERIOD" in refused.content.decode()
    acme.refresh_from_db()
    assert "rate_limits" not in (acme.settings or {})
    saved = client.post(url, {**form, "rate_read_credential": "600/minute", "rate_mcp_organization": "5/second"})
    assert saved.status_code == 302, saved.content.decode()[:2000]
    acme.refresh_from_db()
    assert acme.settings["rate_limits"] == {"read": {"credential": "600/minute"}, "mcp": {"organization": "5/second"}}
    # Shown again as they are; emptied, the defaults hold again.
    assert 'value="600/minute"' in client.get(url).content.decode()
    assert client.post(url, {**form, "settings": json.dumps(acme.settings)}).status_code == 302
    acme.refresh_from_db()
    assert "rate_limits" not in acme.settings
    # The organization's staff see them, and cannot change them.
    User.objects.filter(email="bob@acme.test").update(is_staff=True)
    with scoping.organization_scope(acme):
        Membership.objects.filter(pk=bob.pk).update(role="admin")
    assert signed_in("bob@acme.test").post(url, {**form, "rate_read_credential": "1/day"}).status_code == 403
