"""Refresh ahead of expiry: the scheduled job and its command; transient provider failures retried
with backoff, at most OAUTH_REFRESH_ATTEMPTS times."""

import datetime
import json

from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from oauth import services
from oauth.models import OAuthToken
from oauth.tasks import oauth_tokens_refresh_expiring
from tenants import scoping
from tests.oauth.conftest import connect, make_provider
from tests.oauth.doubles import serve_json


def test_the_command_refreshes_what_expires_within_the_window(alice_api, oauth_server, acme, capsys):
    provider = make_provider(alice_api, oauth_server)
    connect(alice_api, Client(), provider=provider["id"])
    call_command("refresh_oauth_tokens", "--window", "60")
    assert "refreshed=0" in capsys.readouterr().out  # an hour left: not yet
    with scoping.organization_scope(acme):
        OAuthToken.objects.update(expires_at=timezone.now() + datetime.timedelta(minutes=3))
    call_command("refresh_oauth_tokens")  # the default window is five minutes
    assert "refreshed=1" in capsys.readouterr().out
    assert oauth_server.stats()["token:refresh_token"] == 1
    with scoping.organization_scope(acme):
        assert OAuthToken.objects.get().expires_at > timezone.now() + datetime.timedelta(minutes=30)


def test_the_scheduled_task_runs_the_same_job(alice_api, oauth_server, acme):
    provider = make_provider(alice_api, oauth_server)
    connect(alice_api, Client(), provider=provider["id"])
    with scoping.organization_scope(acme):
        OAuthToken.objects.update(expires_at=timezone.now() + datetime.timedelta(seconds=30))
    assert oauth_tokens_refresh_expiring.apply().get() == {"refreshed": 1, "needs_reauth": 0, "failed": 0}


def test_transient_failures_are_retried_then_given_up(alice_api, acme, settings):
    # A provider double that answers 503 twice, then a new token (a 503 is an answer: the server
    # did not take the refresh token, so sending it again is safe).
    answers = iter([(503, "text/plain", b"busy"), (503, "text/plain", b"busy")])

    def token(form, headers):
        if form["grant_type"] == "authorization_code":
            return (
                200,
                "application/json",
                json.dumps({"access_token": "a1", "refresh_token": "r1", "expires_in": 3600}).encode(),
            )
        return next(answers, (200, "application/json", json.dumps({"access_token": "a2", "expires_in": 3600}).encode()))

    with serve_json({"/token": token}) as base:
        provider = alice_api.post("/api/v1/oauth/providers/", {
            "name": "flaky", "kind": "oauth2", "client_id": "c", "authorization_endpoint": f"{base}/authorize", "token_endpoint": f"{base}/token",
        }).json()  # fmt: skip
        started = alice_api.post("/api/v1/oauth/authorize/", {"provider": provider["id"]}).json()
        assert Client().get("/oauth/callback/", {"state": started["state"], "code": "c"}).status_code == 200
        with scoping.organization_scope(acme):
            refreshed = services.refresh(token=OAuthToken.objects.get(), reason="test", force=True)
        assert refreshed.access_token() == "a2" and refreshed.refresh_token() == "r1"
        assert [form["grant_type"] for _, form, _ in serve_json.calls].count("refresh_token") == 3
        settings.OAUTH_REFRESH_ATTEMPTS = 2
        answers = iter([(503, "text/plain", b"busy")] * 5)
        with scoping.organization_scope(acme):
            failed = services.refresh(token=refreshed, reason="test", force=True)
        assert failed.status == "active" and failed.refresh_failures == 1 and failed.access_token() == "a2"
        assert [form["grant_type"] for _, form, _ in serve_json.calls].count("refresh_token") == 5
