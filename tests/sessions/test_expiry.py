"""Sessions past their time are expired by the scheduled job (a real Celery worker) and by
`manage.py cleanup_sessions`, each audited in the session's own organization."""

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.management import call_command
from django.utils import timezone

from audit.models import AuditEvent
from sessions_app.models import AgentSession
from sessions_app.tasks import agent_sessions_expire
from tenants import scoping
from tests.conftest import committed

ROOT = Path(__file__).resolve().parents[2]
SESSIONS = "/api/v1/sessions/"


def open_sessions(api, count: int) -> list[str]:
    return [api.post(SESSIONS, {"name": f"s{i}"}).json()["id"] for i in range(count)]


def backdate(organization, pk, **fields):
    with scoping.organization_scope(organization):
        AgentSession.objects.filter(pk=pk).update(**fields)


def statuses(organization) -> dict:
    with scoping.organization_scope(organization):
        return {str(pk): status for pk, status in AgentSession.objects.values_list("pk", "status")}


@pytest.mark.django_db
def test_the_command_expires_what_is_past_its_time_and_nothing_else(alice_api, charlie_api, acme, globex, capsys):
    idle, old, fresh = open_sessions(alice_api, 3)
    (other,) = open_sessions(charlie_api, 1)
    past = timezone.now() - timedelta(seconds=1)
    backdate(acme, idle, expires_at=past)
    backdate(acme, old, ends_at=past)
    backdate(globex, other, expires_at=past)
    call_command("cleanup_sessions")
    assert "expired=3" in capsys.readouterr().out
    assert statuses(acme) == {idle: "expired", old: "expired", fresh: "active"}
    assert statuses(globex) == {other: "expired"}
    with scoping.organization_scope(acme):
        assert sorted(
            AuditEvent.objects.filter(action="session.expired").values_list("target_id", flat=True)
        ) == sorted([idle, old])
    call_command("cleanup_sessions")
    assert "expired=0" in capsys.readouterr().out


@committed
def test_a_real_worker_runs_the_scheduled_expiry(alice_api, acme):
    (idle,) = open_sessions(alice_api, 1)
    backdate(acme, idle, expires_at=timezone.now() - timedelta(seconds=1))
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "agentapi", "worker", "--pool=solo", "--loglevel=WARNING",
         "--without-heartbeat", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        agent_sessions_expire.delay()
        deadline = time.monotonic() + 30
        while statuses(acme)[idle] != "expired" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert statuses(acme) == {idle: "expired"}
    finally:
        worker.terminate()
        worker.wait(30)
