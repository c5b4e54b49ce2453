"""Every 4xx under /api/ has the documented shape, DRF's own errors included."""

import pytest

from tests.conftest import Api, error_of


def test_an_unknown_api_path_is_a_json_404(alice_api):
    response = alice_api.get("/api/v1/nothing-here/")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"


def test_no_credentials_is_401_with_www_authenticate(db):
    response = Api().get("/api/v1/me/")
    assert response.status_code == 401
    assert error_of(response)["code"] == "not_authenticated"
    assert response["WWW-Authenticate"] == 'Bearer realm="agentapi"'


def test_a_malformed_authorization_header_is_401(db):
    response = Api().get("/api/v1/me/", Authorization="Bearer two parts")
    assert response.status_code == 401 and error_of(response)["code"] == "malformed_credentials"


def test_malformed_json_is_400(alice_api):
    response = alice_api.post("/api/v1/members/", "{not json")
    assert response.status_code == 400 and error_of(response)["code"] == "malformed_request"


def test_a_non_json_body_is_415(alice_api):
    response = alice_api.client.post(
        "/api/v1/members/", "email=x", content_type="application/x-www-form-urlencoded", headers=alice_api.headers
    )
    assert response.status_code == 415 and error_of(response)["code"] == "unsupported_media_type"


def test_an_unsupported_method_is_405(alice_api):
    response = alice_api.put("/api/v1/me/", {})
    assert response.status_code == 405 and error_of(response)["code"] == "method_not_allowed"


def test_validation_errors_name_their_fields(alice_api):
    error = error_of(alice_api.post("/api/v1/api-keys/", {"name": "", "expires_at": "soon"}))
    assert error["code"] == "invalid"
    assert set(error["details"]) == {"name", "expires_at"}


def test_a_body_that_is_not_an_object_is_400(alice_api):
    for body in ("[]", "null", '"text"', "42"):
        response = alice_api.post("/api/v1/api-keys/", body)
        assert response.status_code == 400, body
        error_of(response)


@pytest.mark.parametrize(
    "path", ["/api/v1/audit/events/?action=a%00b", "/api/v1/audit/events/?target_id=a%00b", "/api/v1/members/%00/"]
)
def test_nul_bytes_are_refused_not_crashed_on(alice_api, path):
    response = alice_api.client.get(path, headers=alice_api.headers)
    assert 400 <= response.status_code < 500
    error_of(response)


def test_session_writes_without_csrf_are_refused_in_the_error_shape(alice):
    from django.test import Client

    from tenants.models import User

    user = User.objects.get(email="alice@acme.test")
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    assert client.get("/api/v1/me/").json()["authentication"] == "session"
    response = client.post("/api/v1/members/", {"email": "x@acme.test"}, content_type="application/json")
    assert response.status_code == 403
    assert error_of(response)["code"] == "permission_denied"


def test_strings_the_database_cannot_store_are_a_400_not_a_500(alice_api):
    for body in (
        '{"name": "a\\u0000b"}',
        '{"na\\u0000me": "x"}',
        '{"name": "\\ud800"}',
        '{"scopes": ["ok", "\\udbaa"]}',
    ):
        response = alice_api.request("post", "/api/v1/oauth/providers/", body)
        assert response.status_code == 400, body
        assert error_of(response)["code"] == "malformed_request"


@pytest.mark.parametrize("debug", [False, True])
def test_an_unknown_api_path_is_json_in_every_profile(alice_api, settings, debug):
    settings.DEBUG = debug
    response = alice_api.get("/api/v1/nothing-here/")
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    response = alice_api.post("/api/nothing/at/all", {})
    assert response.status_code == 404 and error_of(response)["code"] == "not_found"


@pytest.mark.parametrize("debug", [False, True])
def test_a_bad_host_under_the_api_is_a_json_400_in_every_profile(alice_api, settings, debug):
    settings.DEBUG = debug
    response = alice_api.get("/api/v1/me/", HOST="evil.example.com")
    assert response.status_code == 400 and error_of(response)["code"] == "bad_request"


@pytest.mark.parametrize("debug", [False, True])
def test_a_body_over_the_limit_is_a_413_that_names_it(alice_api, settings, debug):
    settings.DEBUG = debug
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = alice_api.post("/api/v1/members/", {"email": "x@acme.test", "name": "y" * 2000})
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "request_too_large" and "1000 bytes" in error["message"]
