"""Shared fixtures. Every test has two organizations: Acme (alice owner, bob member) and Globex
(charlie owner). "Charlie should have no access to Alice's stuff", and the other way round."""

import json
from urllib.parse import urlsplit

import pytest
from django.db import connection
from django.http import HttpResponse
from django.test import Client

from agentapi import dataplane
from tenants import scoping, services
from tenants.models import Membership, User


@pytest.fixture(scope="session")
def django_db_setup():
    """tests/services.py created and migrated the database (as its owner); tests use it as it is."""


# Rows the migrations' post_migrate handlers made once and no test changes: emptying the database
# after a test leaves them, so they need not be made again.
KEPT_TABLES = {"django_migrations", "django_content_type", "auth_permission"}


def _empty_the_database(self) -> None:
    """After a `committed` test: every row gone, once, through the tables' owner.

    Django's own teardown (TransactionTestCase._fixture_teardown) runs `flush` for each database
    alias the test names: a TRUNCATE of every table, which makes new files for each of them and
    their indexes, then the post_migrate handlers that make the content types and permissions
    again. That took 0.25 s per alias after each of several hundred tests, a fifth of the suite.
    Here the owner deletes every row in one transaction instead: the foreign keys are deferred
    (Django makes them DEFERRABLE INITIALLY DEFERRED), row-level security lets the owner see every
    organization's rows (app.all_organizations), and the append-only tables' trigger lets the
    owner delete inside a maintenance transaction (app.privileged_maintenance), as the audit
    purge does. Content types and permissions are kept."""
    from django.db import connections, transaction

    from agentapi.db.privileges import privileged_alias

    alias = privileged_alias()
    owner = connections[alias]
    quote = owner.ops.quote_name
    tables = sorted(set(owner.introspection.django_table_names(only_existing=True)) - KEPT_TABLES)
    with transaction.atomic(using=alias), owner.cursor() as cursor:
        cursor.execute(
            "SELECT set_config('app.privileged_maintenance', 'on', true),"
            " set_config('app.all_organizations', 'on', true)"
        )
        cursor.execute("; ".join(f"DELETE FROM {quote(table)}" for table in tables))


def pytest_configure(config):
    from django.test import TransactionTestCase

    TransactionTestCase._fixture_teardown = _empty_the_database


class Api:
    """A JSON client for one credential."""

    def __init__(self, key: str | None = None, **headers):
        self.client = Client()
        self.headers = dict(headers)
        if key:
            self.headers["Authorization"] = f"Bearer {key}"

    def request(self, method: str, path: str, data=None, **headers):
        scope = {"type": "http", "method": method.upper(), "path": urlsplit(path).path}
        if dataplane.match_app(scope) or (dataplane.enabled() and dataplane.match(scope)):
            return data_plane_request(method.upper(), path, data, {**self.headers, **headers})
        kwargs = {"headers": {**self.headers, **headers}}
        if data is not None:
            kwargs["data"] = data if isinstance(data, (str, bytes)) else json.dumps(data)
            kwargs["content_type"] = "application/json"
        return getattr(self.client, method.lower())(path, **kwargs)

    def get(self, path, data=None, **headers):
        if path.startswith("/mcp/"):
            return self.request("get", path, data, **headers)
        return self.client.get(path, data=data, headers={**self.headers, **headers})

    def post(self, path, data=None, **headers):
        return self.request("post", path, data if data is not None else {}, **headers)

    def patch(self, path, data=None, **headers):
        return self.request("patch", path, data if data is not None else {}, **headers)

    def put(self, path, data=None, **headers):
        return self.request("put", path, data if data is not None else {}, **headers)

    def delete(self, path, data=None, **headers):
        return self.request("delete", path, data, **headers)


class DataPlaneResponse(HttpResponse):
    def json(self):
        return json.loads(self.content)


async def committed_changes_heard() -> None:
    """Wait until the data plane's change listener (agentapi.db.aio.Changes) has heard every change
    this test committed before the request it is about to send.

    A web process hears a change a moment after it commits, and a call in that moment is answered
    as one made just before the change (the access cache's documented behaviour; the cache's own
    tests assert that the refusal comes, within half a second). A test that changes something and
    calls at once would race that moment, so each in-process data-plane request first sends a
    marker on the same channel and waits for it: PostgreSQL delivers a listener's notifications in
    commit order, so once the marker has been heard, so has everything committed before it. The
    marker names organization 0, which no row has. When nothing is kept, or nothing kept is used,
    there is nothing to wait for."""
    import asyncio
    import time

    from agentapi.db import aio
    from agentapi.db.operations import CHANGES_CHANNEL
    from agentapi.db.scope import DatabaseScope
    from mcp import dataplane as mcp_dataplane

    changes = aio.changes()
    if not mcp_dataplane._access or not changes.listening:
        return
    before = changes._by_organization.get(0)
    await aio.run(DatabaseScope(), [("SELECT pg_notify(%s, '0')", [CHANGES_CHANNEL])])
    deadline = time.monotonic() + 5
    while changes._by_organization.get(0) == before and changes.listening:
        assert time.monotonic() < deadline, "the data plane's change listener did not hear a notification in 5 s"
        await asyncio.sleep(0.001)


def data_plane_request(method: str, path: str, data, headers: dict) -> DataPlaneResponse:
    """Send a request to a data-plane route as the web process serves it: over ASGI, natively on
    the event loop the MCP pool runs on (agentapi.asgi routes it to agentapi.dataplane.serve)."""
    from mcp import pool

    assert not connection.in_atomic_block, (
        "The data plane reads committed rows through its own connections: mark the test `committed`."
    )
    url = urlsplit(path)
    if data is None:
        body = b""
    else:
        body = data if isinstance(data, bytes) else (data if isinstance(data, str) else json.dumps(data)).encode()
    header_list = [(b"host", b"testserver"), (b"content-length", str(len(body)).encode())]
    if data is not None:
        header_list.append((b"content-type", b"application/json"))
    header_list += [(name.lower().encode(), str(value).encode()) for name, value in headers.items()]
    scope = {
        "type": "http",
        "method": method,
        "path": url.path,
        "query_string": url.query.encode(),
        "headers": header_list,
        "client": ("127.0.0.1", 50000),
        "scheme": "http",
    }
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    async def serve():
        await committed_changes_heard()
        app = dataplane.match_app(scope)
        if app is not None:
            return await dataplane.serve_app(*app, scope, receive, send)
        route, kwargs = dataplane.match(scope)
        await dataplane.serve(route, kwargs, scope, receive, send)

    pool.run_on_pool_loop(serve)
    start = sent[0]
    response = DataPlaneResponse(b"".join(m.get("body", b"") for m in sent[1:]), status=start["status"])
    for name, value in start["headers"]:
        response[name.decode()] = value.decode()
    return response


def make_member(organization, email: str, role: str) -> Membership:
    with scoping.organization_scope(organization):
        return services.membership_create(organization=organization, email=email, role=role)


def make_key(membership: Membership, name: str = "test", **kwargs) -> str:
    with scoping.organization_scope(membership.organization):
        _, key = services.api_key_create(membership=membership, name=name, **kwargs)
    return key


@pytest.fixture
def acme(db):
    return services.organization_create(slug="acme", name="Acme")


@pytest.fixture
def globex(db):
    return services.organization_create(slug="globex", name="Globex")


@pytest.fixture
def alice(acme) -> Membership:
    return make_member(acme, "alice@acme.test", "owner")


@pytest.fixture
def bob(acme) -> Membership:
    return make_member(acme, "bob@acme.test", "member")


@pytest.fixture
def charlie(globex) -> Membership:
    return make_member(globex, "charlie@globex.test", "owner")


@pytest.fixture
def alice_api(alice) -> Api:
    return Api(make_key(alice))


@pytest.fixture
def bob_api(bob) -> Api:
    return Api(make_key(bob))


@pytest.fixture
def charlie_api(charlie) -> Api:
    return Api(make_key(charlie))


@pytest.fixture
def operator(acme) -> Membership:
    membership = make_member(acme, "operator@platform.test", "member")
    User.objects.filter(pk=membership.user_id).update(is_superuser=True, is_staff=True)
    membership.user.refresh_from_db()
    return membership


@pytest.fixture
def operator_api(operator) -> Api:
    return Api(make_key(operator))


def error_of(response) -> dict:
    """The error body, checked to have the documented shape."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["message"]
    return body["error"]


# Tests whose rows must really commit (another connection reads them). The database is emptied
# afterwards through the owner's connection (the application role may not TRUNCATE).
committed = pytest.mark.django_db(transaction=True, databases=["default", "owner"])


def streamed(response) -> str:
    """The whole body of a streaming response (an async iterator under ASGI, read here in full)."""
    return b"".join(response).decode()
