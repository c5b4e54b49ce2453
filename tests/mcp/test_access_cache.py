"""The data plane's access cache (mcp.dataplane): a tool call's caller and configuration are read
once and used again only while PostgreSQL announces no change to them (agentapi.db.aio.Changes,
fed by the NotifyChanges triggers). Every change that decides access takes effect on the next
call, not after a time to live; what cannot be heard is not trusted."""

import os
import signal
import time

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from agentapi.db import aio
from agentapi.db.operations import CHANGES_CHANNEL
from mcp import dataplane as mcp_dataplane
from mcp import pool
from mcp.models import MCPConfiguration, PinStatus, ToolPin
from tenants import scoping
from tenants.models import APIKey, Membership, Organization, User
from tests.conftest import Api, committed, error_of, make_key
from tests.mcp.conftest import configure

pytestmark = committed


@pytest.fixture(autouse=True)
def changes_heard(db):
    """The test process's data plane (on the MCP pool's loop) listening, as a web process is
    from its start (EVENT_LOOP_STARTUP)."""

    async def started():
        return aio.changes().listening

    deadline = time.monotonic() + 5
    while not pool.run_on_pool_loop(started) and time.monotonic() < deadline:
        time.sleep(0.02)


BODY = {"name": "echo", "arguments": {"text": "x"}}


def call(api, configuration, body=BODY):
    return api.post(f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/", body)


def kept(configuration) -> list:
    return [entry for key, entry in mcp_dataplane._access.items() if key[1] == configuration["id"]]


def refused_within(api, configuration, status, seconds=1.0):
    """The first answer with `status` (PostgreSQL's notification reaches the web process a moment
    after the change commits: a call in that moment is answered as one made just before it)."""
    deadline = time.monotonic() + seconds
    while True:
        response = call(api, configuration)
        if response.status_code == status or time.monotonic() > deadline:
            return response
        time.sleep(0.01)


@pytest.fixture
def listener():
    """A connection LISTENing on the channel, as the data plane's is."""
    with psycopg.connect(**aio._conninfo(), autocommit=True) as connection:
        connection.execute(f"LISTEN {CHANGES_CHANNEL}")
        yield lambda: sorted(n.payload for n in connection.notifies(timeout=0.3))


def test_the_tables_announce_what_changes_access_and_nothing_else(listener, alice, alice_api, http_server, acme):
    configuration = configure(alice_api, url=http_server.url)
    listener()  # what set-up announced
    with scoping.organization_scope(acme):
        keys = APIKey.objects.filter(membership=alice)
        keys.update(last_used_at=timezone.now())
        assert listener() == []  # a key's last use is not a change to its access
        keys.update(revoked_at=timezone.now())
        assert listener() == [str(acme.pk)]
        servers = MCPConfiguration.objects.filter(pk=configuration["id"])
        servers.update(last_checked_at=timezone.now(), status="healthy", consecutive_failures=0)
        assert listener() == []  # a health check that only records itself
        servers.update(enabled=False)
        assert listener() == [str(acme.pk)]
        Membership.objects.filter(pk=alice.pk).update(role="admin")
        assert listener() == [str(acme.pk)]
    User.objects.filter(pk=alice.user_id).update(last_login=timezone.now())
    assert listener() == []
    User.objects.filter(pk=alice.user_id).update(is_active=False)
    assert listener() == ["*"]  # a user may belong to any organization
    Organization.objects.filter(pk=acme.pk).update(settings={"x": 1})
    assert listener() == [str(acme.pk)]
    # A change rolled back is never announced.
    with pytest.raises(RuntimeError), scoping.organization_scope(acme):
        from django.db import transaction

        with transaction.atomic():
            Organization.objects.filter(pk=acme.pk).update(is_active=False)
            raise RuntimeError
    assert listener() == []


def test_a_second_call_uses_what_the_first_read(alice_api, http_server):
    configuration = configure(alice_api, url=http_server.url)
    # The first call may come before the configuration's own creation is heard: what it read is
    # then read again by the next (a late notification discards, never keeps).
    assert call(alice_api, configuration).status_code == 200
    assert call(alice_api, configuration).status_code == 200
    [entry] = kept(configuration)
    assert call(alice_api, configuration).status_code == 200
    assert kept(configuration) == [entry] and kept(configuration)[0] is entry  # not read again


def revoke(alice, acme, configuration):
    with scoping.organization_scope(acme):
        APIKey.objects.filter(membership=alice).update(revoked_at=timezone.now())
    return 401, "api_key_revoked"


def expire(alice, acme, configuration):
    with scoping.organization_scope(acme):
        APIKey.objects.filter(membership=alice).update(expires_at=timezone.now())
    return 401, "api_key_expired"


def deactivate_user(alice, acme, configuration):
    User.objects.filter(pk=alice.user_id).update(is_active=False)
    return 401, "user_inactive"


def deactivate_organization(alice, acme, configuration):
    Organization.objects.filter(pk=acme.pk).update(is_active=False)
    return 401, "organization_inactive"


def remove_member(alice, acme, configuration):
    with scoping.organization_scope(acme):
        Membership.objects.filter(pk=alice.pk).delete()
    return 401, "invalid_api_key"


def disable_server(alice, acme, configuration):
    with scoping.organization_scope(acme):
        MCPConfiguration.objects.filter(pk=configuration["id"]).update(enabled=False)
    return 409, "configuration_disabled"


def disallow_tool(alice, acme, configuration):
    with scoping.organization_scope(acme):
        MCPConfiguration.objects.filter(pk=configuration["id"]).update(allowed_tools=["add"])
    return 403, "tool_not_allowed"


def withhold_tool(alice, acme, configuration):
    with scoping.organization_scope(acme):
        ToolPin.objects.filter(configuration_id=configuration["id"], name="echo").update(status=PinStatus.PENDING)
    return 409, "tool_pending_approval"


def give_to_another_member(alice, acme, configuration):
    from tests.conftest import make_member

    other = make_member(acme, "dora@acme.test", "member")
    with scoping.organization_scope(acme):
        MCPConfiguration.objects.filter(pk=configuration["id"]).update(owner_id=other.user_id)
    return 404, "not_found"


@pytest.mark.parametrize(
    "change",
    [
        revoke,
        expire,
        deactivate_user,
        deactivate_organization,
        remove_member,
        disable_server,
        disallow_tool,
        withhold_tool,
        give_to_another_member,
    ],
)
def test_a_change_to_access_takes_effect_on_the_next_call(change, alice, alice_api, http_server, acme):
    configuration = configure(alice_api, url=http_server.url)
    if change is withhold_tool:
        assert alice_api.get(f"/api/v1/mcp/configurations/{configuration['id']}/tools/").status_code == 200  # pinned
    assert call(alice_api, configuration).status_code == 200
    assert call(alice_api, configuration).status_code == 200
    assert kept(configuration)
    status, code = change(alice, acme, configuration)
    started = time.monotonic()
    response = refused_within(alice_api, configuration, status)
    assert response.status_code == status and error_of(response)["code"] == code, response.content
    assert time.monotonic() - started < 0.5


def test_refusals_and_ids_not_found_are_never_kept(alice, alice_api, charlie_api, http_server, acme):
    configuration = configure(alice_api, url=http_server.url)
    theirs = configure(charlie_api, url=http_server.url)
    assert call(alice_api, theirs).status_code == 404
    revoked = make_key(alice, "revoked")
    with scoping.organization_scope(acme):
        APIKey.objects.filter(name="revoked").update(revoked_at=timezone.now())
    assert call(Api(revoked), configuration).status_code == 401
    assert kept(theirs) == [] and kept(configuration) == []


def test_nothing_kept_is_used_while_the_notifications_could_have_been_missed(alice_api, http_server):
    configuration = configure(alice_api, url=http_server.url)
    assert call(alice_api, configuration).status_code == 200
    assert call(alice_api, configuration).status_code == 200
    [entry] = kept(configuration)

    async def state():
        changes = aio.changes()
        return changes.listening, changes.number

    listening, number = pool.run_on_pool_loop(state)
    assert listening
    with connection.cursor() as cursor:  # the role the listener connects as
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'agentapi-dataplane-changes' AND datname = current_database()"
        )
    deadline = time.monotonic() + 5
    while pool.run_on_pool_loop(state) != (True, number + 1) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pool.run_on_pool_loop(state) == (True, number + 1)  # listening again, the past forgotten
    assert call(alice_api, configuration).status_code == 200
    [again] = kept(configuration)
    assert again is not entry  # read again: the first was made before notifications could be missed


def test_it_is_off_when_its_time_is_zero(alice_api, http_server, settings):
    settings.DATA_PLANE_ACCESS_CACHE_SECONDS = 0
    configuration = configure(alice_api, url=http_server.url)
    assert call(alice_api, configuration).status_code == 200
    assert kept(configuration) == []


def listener_backend() -> int:
    with connection.cursor() as cursor:  # the role the listener connects as
        cursor.execute(
            "SELECT pid FROM pg_stat_activity "
            "WHERE application_name = 'agentapi-dataplane-changes' AND datname = current_database()"
        )
        [(pid,)] = cursor.fetchall()
    return pid


def test_nothing_kept_is_used_while_the_channel_carries_nothing(alice_api, http_server, settings):
    """A listener that stays connected but hears nothing (its server process stopped here; a proxy
    such as PgBouncer in transaction mode does the same to LISTEN): the process's own heartbeat
    does not come back, so nothing kept is trusted; once it does, what was kept is read again."""
    configuration = configure(alice_api, url=http_server.url)
    assert call(alice_api, configuration).status_code == 200
    assert call(alice_api, configuration).status_code == 200
    [entry] = kept(configuration)

    async def listening():
        return aio.changes().listening

    settings.CHANGES_HEARTBEAT_SECONDS = 0.2
    backend = listener_backend()
    os.kill(backend, signal.SIGSTOP)
    try:
        time.sleep(0.6)
        assert not pool.run_on_pool_loop(listening)
        assert call(alice_api, configuration).status_code == 200
        assert kept(configuration) == []  # read, and not kept
    finally:
        os.kill(backend, signal.SIGCONT)
    deadline = time.monotonic() + 10
    while not pool.run_on_pool_loop(listening) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pool.run_on_pool_loop(listening)
    assert call(alice_api, configuration).status_code == 200
    [again] = kept(configuration)
    assert again is not entry


def test_a_kept_keys_last_use_is_still_recorded(alice, alice_api, http_server, acme, settings):
    settings.API_KEY_LAST_USED_INTERVAL_SECONDS = 0  # every use is due to be written
    configuration = configure(alice_api, url=http_server.url)
    assert call(alice_api, configuration).status_code == 200
    assert call(alice_api, configuration).status_code == 200
    [entry] = kept(configuration)
    with scoping.organization_scope(acme):
        before = APIKey.objects.get(pk=entry.principal.api_key.pk).last_used_at
    assert call(alice_api, configuration).status_code == 200
    assert kept(configuration)[0] is entry  # served from what was kept
    with scoping.organization_scope(acme):
        assert APIKey.objects.get(pk=entry.principal.api_key.pk).last_used_at > before
