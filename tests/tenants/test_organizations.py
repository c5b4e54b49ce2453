from audit.models import AuditEvent
from tenants import scoping
from tenants.models import Organization
from tests.conftest import Api, error_of


def test_an_operator_creates_an_organization_with_its_owner(operator_api):
    response = operator_api.post(
        "/api/v1/organizations/",
        {"slug": "initech", "name": "Initech", "owner_email": "bill@initech.test", "settings": {"max_api_keys": 5}},
    )
    assert response.status_code == 201, response.content
    organization = Organization.objects.get(slug="initech")
    assert organization.settings == {"max_api_keys": 5}
    with scoping.organization_scope(organization):
        actions = sorted(AuditEvent.objects.values_list("action", flat=True))
    assert actions == ["tenants.membership.create", "tenants.organization.create"]


def test_an_operator_lists_every_organization(operator_api, globex):
    slugs = {item["slug"] for item in operator_api.get("/api/v1/organizations/").json()["results"]}
    assert slugs == {"acme", "globex"}


def test_an_operator_deactivates_an_organization_and_its_keys_stop_working(operator_api, charlie_api, globex):
    assert charlie_api.get("/api/v1/me/").status_code == 200
    response = operator_api.patch(f"/api/v1/organizations/{globex.pk}/", {"is_active": False})
    assert response.status_code == 200 and response.json()["is_active"] is False
    refused = charlie_api.get("/api/v1/me/")
    assert refused.status_code == 401
    assert error_of(refused)["code"] == "organization_inactive"


def test_it_refuses_duplicate_slugs_and_unknown_settings(operator_api):
    assert operator_api.post("/api/v1/organizations/", {"slug": "acme", "name": "Again"}).status_code == 409
    response = operator_api.post("/api/v1/organizations/", {"slug": "n", "name": "N", "settings": {"evil": 1}})
    assert response.status_code == 400
    assert "settings" in error_of(response)["details"]
    assert operator_api.patch("/api/v1/organizations/1/", {"slug": "renamed"}).status_code in (200, 404)
    assert not Organization.objects.filter(slug="renamed").exists()


def test_a_member_is_not_an_operator(bob_api):
    assert bob_api.get("/api/v1/organizations/").status_code == 403
    assert Api().get("/api/v1/organizations/").status_code == 401
