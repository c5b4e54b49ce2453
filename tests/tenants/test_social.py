"""Admin sign-in with a company identity (social-auth-app-django), through the whole flow: the
login page's button, the provider's redirect, the code exchange, the profile, the pipeline.

The provider is a double of GitHub on loopback (GitHub itself cannot run here): its token endpoint
and its /user and /user/emails API, nothing else. The backend is social-core's own GitHub backend,
pointed at the double."""

from urllib.parse import parse_qs, urlsplit

import pytest
from django.test import Client
from social_core.backends.github import GithubOAuth2
from social_django.models import UserSocialAuth

from audit.models import AuditEvent
from tenants import scoping
from tenants.models import User
from tests.conftest import make_member
from tests.oauth.doubles import serve_json


class GithubDouble(GithubOAuth2):
    name = "github-double"
    base = ""

    def authorization_url(self):
        return f"{self.base}/login/oauth/authorize"

    def access_token_url(self):
        return f"{self.base}/login/oauth/access_token"

    def api_url(self):
        return f"{self.base}/api/"


@pytest.fixture
def github(settings, db):
    def token(form, headers):
        return 200, "application/json", b'{"access_token": "gho_double", "token_type": "bearer", "scope": "user:email"}'

    routes = {"/login/oauth/access_token": token, "/api/user": {"id": 4242, "login": "someone", "name": "Some One"}}
    with serve_json(routes) as base:  # the handler reads `routes` on every request: tests set the addresses
        GithubDouble.base = base
        settings.AUTHENTICATION_BACKENDS = [
            "tests.tenants.test_social.GithubDouble",
            "django.contrib.auth.backends.ModelBackend",
        ]
        settings.SOCIAL_LOGIN_BACKENDS = [("tests.tenants.test_social.GithubDouble", "GitHub")]
        settings.SOCIAL_AUTH_GITHUB_DOUBLE_KEY = "client-id"
        settings.SOCIAL_AUTH_GITHUB_DOUBLE_SECRET = "client-secret"
        yield routes


def sign_in(github_routes, email: str, *, verified=True) -> tuple[Client, object]:
    github_routes["/api/user/emails"] = [
        {"email": "old@elsewhere.test", "primary": False, "verified": True},
        {"email": email, "primary": True, "verified": verified},
    ]
    client = Client()
    started = client.post("/auth/login/github-double/")
    assert started.status_code == 302 and started["Location"].startswith(GithubDouble.base), started.content
    state = parse_qs(urlsplit(started["Location"]).query)["state"][0]
    finished = client.get("/auth/complete/github-double/", {"code": "c0de", "state": state})
    return client, finished


def signed_in_as(client) -> int | None:
    value = client.session.get("_auth_user_id")
    return int(value) if value else None


def test_the_login_page_offers_only_configured_providers(github, settings):
    page = Client().get("/admin/login/").content.decode()
    assert "company identity" in page and 'data-provider="github-double"' in page
    settings.SOCIAL_LOGIN_BACKENDS = []
    assert "company identity" not in Client().get("/admin/login/").content.decode()


def test_an_operator_signs_in_by_verified_email(github, operator):
    client, finished = sign_in(github, "Operator@Platform.test")
    assert finished.status_code == 302 and finished["Location"] == "/admin/"
    assert signed_in_as(client) == operator.user_id
    assert UserSocialAuth.objects.get(user_id=operator.user_id).uid == "4242"
    assert client.get("/admin/").status_code == 200


def test_organization_staff_sign_in_and_gain_nothing(github, alice):
    User.objects.filter(pk=alice.user_id).update(is_staff=True)
    client, _ = sign_in(github, "alice@acme.test")
    assert signed_in_as(client) == alice.user_id
    user = User.objects.get(pk=alice.user_id)
    assert user.is_superuser is False and user.is_staff is True


@pytest.mark.parametrize(
    ("email", "verified", "why"),
    [
        ("nobody@nowhere.test", True, "no such user: none is made"),
        ("operator@platform.test", False, "the provider does not vouch for the address"),
        ("bob@acme.test", True, "a member who is not staff: the admin is not for them"),
    ],
)
def test_refused_sign_ins(github, operator, bob, email, verified, why):
    users = User.objects.count()
    client, finished = sign_in(github, email, verified=verified)
    assert signed_in_as(client) is None, why
    assert finished.status_code == 302 and "social=refused" in finished["Location"]
    assert User.objects.count() == users and not UserSocialAuth.objects.exists()
    with scoping.dangerously_all_organizations(reason="test", record=False):
        failure = AuditEvent.objects.get(action="tenants.authentication.fail")
    assert failure.outcome == "failure" and failure.details["reason"].startswith("social_")


def test_staff_without_a_managing_membership_are_refused(github, acme):
    member = make_member(acme, "viewer@acme.test", "member")
    User.objects.filter(pk=member.user_id).update(is_staff=True)
    client, _ = sign_in(github, "viewer@acme.test")
    assert signed_in_as(client) is None


@pytest.mark.parametrize(
    ("backend_path", "details", "response", "expected"),
    [
        ("social_core.backends.google.GoogleOAuth2", {"email": "a@x.test"}, {"email_verified": True}, "a@x.test"),
        ("social_core.backends.google.GoogleOAuth2", {"email": "a@x.test"}, {"email_verified": False}, None),
        ("social_core.backends.google.GoogleOAuth2", {"email": "a@x.test"}, {}, None),
        ("social_core.backends.auth0.Auth0OAuth2", {"email": "a@x.test"}, {"email_verified": True}, "a@x.test"),
        ("social_core.backends.auth0.Auth0OAuth2", {"email": "a@x.test"}, {"email_verified": "true"}, None),
        ("social_core.backends.azuread_tenant.AzureADTenantOAuth2", {"email": "a@contoso.test"}, {}, "a@contoso.test"),
        ("social_core.backends.github.GithubOAuth2", {"email": "a@x.test"}, {"emails": [{"email": "a@x.test", "primary": True, "verified": False}]}, None),
    ],
)  # fmt: skip
def test_each_provider_must_vouch_for_the_address(backend_path, details, response, expected):
    from django.utils.module_loading import import_string

    from tenants.social import _verified_address

    backend = import_string(backend_path)
    assert _verified_address(backend, details, response) == expected
