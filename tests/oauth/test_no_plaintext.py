"""A known token, planted through the real flow, is found nowhere in plaintext: not in any table,
log line, audit record, API response or admin page."""

import logging

from django.db import connection
from django.test import Client

from oauth.models import OAuthToken
from tenants import scoping
from tenants.models import User
from tests.conftest import committed, streamed
from tests.oauth.conftest import connect, make_provider


def every_row_as_text() -> str:
    with (
        scoping.dangerously_all_organizations(reason="test: search every table", record=False),
        connection.cursor() as cursor,
    ):
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        tables = [row[0] for row in cursor.fetchall()]
        dump = []
        for table in tables:
            cursor.execute(f'SELECT row_to_json(t)::text FROM "{table}" t')
            dump += [row[0] for row in cursor.fetchall()]
    return "\n".join(dump)


@committed  # through the data plane: it reads committed rows
def test_a_planted_token_is_nowhere_in_plaintext(alice_api, alice, acme, oauth_server, caplog, operator):
    caplog.set_level(logging.DEBUG)
    responses = []
    provider = make_provider(alice_api, oauth_server)
    created = alice_api.post(
        "/api/v1/mcp/configurations/", {"name": "guarded", "url": oauth_server.url, "auth_type": "oauth"}
    )
    responses.append(created)
    connect(alice_api, Client(), mcp_configuration=created.json()["id"])
    connect(alice_api, Client(), provider=provider["id"])
    with scoping.organization_scope(acme):
        planted = [(t.access_token(), t.refresh_token()) for t in OAuthToken.objects.all()]
        client_secret = OAuthToken.objects.select_related("provider").first().provider.client_secret()
    secrets = [value for pair in planted for value in pair] + [client_secret]
    assert len(planted) == 2 and all(secrets)
    base = f"/api/v1/mcp/configurations/{created.json()['id']}"
    responses += [
        alice_api.post(f"{base}/tools/call/", {"name": "echo", "arguments": {"text": "hello"}}),
        alice_api.get(f"{base}/tools/"),
        alice_api.get("/api/v1/oauth/tokens/"),
        alice_api.get("/api/v1/oauth/providers/"),
        alice_api.get(f"/api/v1/oauth/providers/{provider['id']}/"),
        alice_api.get("/api/v1/audit/events/"),
        alice_api.get("/api/v1/audit/events/export/"),
    ]
    token_id = alice_api.get("/api/v1/oauth/tokens/").json()["results"][0]["id"]
    responses.append(alice_api.post(f"/api/v1/oauth/tokens/{token_id}/refresh/"))
    with scoping.organization_scope(acme):
        planted += [(t.access_token(), t.refresh_token()) for t in OAuthToken.objects.all()]
    secrets = [value for pair in planted for value in pair] + [client_secret]
    admin = Client()
    admin.force_login(User.objects.get(pk=operator.user_id))
    pages = [admin.get(path) for path in (
        "/admin/oauth/oauthtoken/", f"/admin/oauth/oauthtoken/{token_id}/change/", "/admin/oauth/oauthprovider/",
        f"/admin/oauth/oauthprovider/{provider['id']}/change/", "/admin/audit/auditevent/", "/admin/mcp/mcpconfiguration/",
    )]  # fmt: skip
    assert all(page.status_code == 200 for page in pages), [page.status_code for page in pages]
    texts = {
        "database": every_row_as_text(),
        "logs": "\n".join(record.getMessage() + repr(record.__dict__) for record in caplog.records),
        "responses": "\n".join(streamed(r) if r.streaming else r.content.decode() for r in responses),
        "admin": "\n".join(page.content.decode() for page in pages),
    }
    assert "echo" in texts["responses"] and "oauth.token.create" in texts["database"]  # the searches see real data
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a planted secret appears in the {where}"
