"""A session's use slides its expiry through Redis (one write per interval to its row, shared by
every process); the expiry job asks Redis before it expires a session its row calls idle; without
Redis the writes are throttled the same way in each process."""

from datetime import timedelta

import redis
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from sessions_app import liveness
from sessions_app.models import AgentSession
from tenants import scoping
from tests.conftest import committed
from tests.mcp.conftest import configure

pytestmark = committed
SESSIONS = "/api/v1/sessions/"


def row(organization, pk) -> AgentSession:
    with scoping.organization_scope(organization):
        return AgentSession.objects.get(pk=pk)


def backdate(organization, pk, **fields):
    with scoping.organization_scope(organization):
        AgentSession.objects.filter(pk=pk).update(**fields)


def call(api, session, times=1):
    for _ in range(times):
        response = api.post(f"{SESSIONS}{session}/tools/call/", {"name": "s__echo", "arguments": {"text": "x"}})
        assert response.status_code == 200, response.content


def test_a_call_slides_the_expiry_in_redis_and_writes_the_row_once_per_interval(alice_api, http_server, acme):
    server = configure(alice_api, name="s", url=http_server.url)
    session = alice_api.post(SESSIONS, {"mcp_configurations": [server["id"]]}).json()["id"]
    long_ago = timezone.now() - timedelta(minutes=30)
    backdate(acme, session, last_active_at=long_ago, expires_at=long_ago + timedelta(hours=1))
    call(alice_api, session)
    client = redis.Redis.from_url(settings.REDIS_URL)
    seen = int(client.get(liveness.seen_key(session)))
    assert abs(seen - timezone.now().timestamp()) < 5
    assert 0 < client.ttl(liveness.seen_key(session)) <= settings.SESSION_IDLE_TTL_SECONDS
    written = row(acme, session)
    assert written.last_active_at > long_ago + timedelta(minutes=29)
    assert written.expires_at > timezone.now() + timedelta(minutes=59)
    # Within the interval, further calls touch Redis only (each as if from another process: the
    # same process skips even Redis within a second).
    backdate(acme, session, last_active_at=long_ago)
    for _ in range(3):
        liveness._seen_here.clear()
        call(alice_api, session)
    assert row(acme, session).last_active_at == long_ago
    assert int(client.get(liveness.seen_key(session))) >= seen


def test_the_expiry_job_spares_a_session_redis_saw_in_use(alice_api, http_server, acme, capsys):
    server = configure(alice_api, name="s", url=http_server.url)
    used, idle = (alice_api.post(SESSIONS, {"mcp_configurations": [server["id"]]}).json()["id"] for _ in range(2))
    call(alice_api, used)
    past = timezone.now() - timedelta(seconds=1)
    for pk in (used, idle):  # both rows say idle: the used one's row is an interval behind
        backdate(acme, pk, expires_at=past)
    call_command("cleanup_sessions")
    assert "expired=1 slid=1" in capsys.readouterr().out
    assert row(acme, idle).status == "expired"
    spared = row(acme, used)
    assert spared.status == "active" and spared.expires_at > timezone.now() + timedelta(minutes=59)


def test_without_redis_each_process_throttles_its_own_writes(alice_api, http_server, acme, settings):
    server = configure(alice_api, name="s", url=http_server.url)
    session = alice_api.post(SESSIONS, {"mcp_configurations": [server["id"]]}).json()["id"]
    settings.REDIS_URL = ""  # the embedded profile's way: no Redis at all
    settings.DATA_PLANE_ENABLED = False  # the management plane's calls, as on the embedded profile
    liveness._local_writes.clear()
    liveness._seen_here.clear()
    long_ago = timezone.now() - timedelta(minutes=30)
    backdate(acme, session, last_active_at=long_ago)
    call(alice_api, session)
    assert row(acme, session).last_active_at > long_ago + timedelta(minutes=29)
    backdate(acme, session, last_active_at=long_ago)
    liveness._seen_here.clear()
    call(alice_api, session, times=2)
    assert row(acme, session).last_active_at == long_ago
