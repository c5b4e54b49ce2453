"""The scheduled retention job, run by a real Celery worker on the test Redis."""

import os
import subprocess
import sys
import time
from pathlib import Path

from django.db import connections, transaction

from agentapi import context
from audit import chain
from audit.models import AuditEvent
from audit.sequencer import audit_chain_extend
from audit.services import audit_record
from audit.tasks import audit_events_purge_expired
from tenants import scoping
from tests.conftest import committed

ROOT = Path(__file__).resolve().parents[2]


def backdate_and_rehash(organization, days: int) -> None:
    """Make an organization's events `days` old, as if written then (owner, trigger off)."""
    audit_chain_extend()
    with transaction.atomic(using="owner"), connections["owner"].cursor() as cursor:
        cursor.execute("SELECT set_config('app.all_organizations', 'on', true)")
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER append_only_rows")
        cursor.execute(
            "UPDATE audit_auditevent SET occurred_at = occurred_at - make_interval(days => %s) "
            "WHERE organization_id = %s",
            [days, organization.pk],
        )
        prev = "0" * 64
        for event in AuditEvent._base_manager.using("owner").filter(organization=organization).order_by("seq"):
            new_hash = chain.compute_hash(event, prev)
            AuditEvent._base_manager.using("owner").filter(pk=event.pk).update(prev_hash=prev, hash=new_hash)
            prev = new_hash
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER append_only_rows")


@committed
def test_a_real_worker_purges_expired_events_and_keeps_the_request_id(acme):
    with scoping.organization_scope(acme):
        for i in range(3):
            audit_record("test.old.write", details={"i": i})
    backdate_and_rehash(acme, days=10)

    env = {**os.environ, "AUDIT_RETENTION_DAYS": "5"}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "agentapi",
            "worker",
            "--pool=solo",
            "--loglevel=WARNING",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        token = context.bind_request(request_id="req-from-the-scheduler")
        try:
            audit_events_purge_expired.delay()
        finally:
            context.reset(token)
        deadline = time.monotonic() + 30
        purge = None
        while purge is None and time.monotonic() < deadline:
            with scoping.organization_scope(acme):
                purge = AuditEvent.objects.filter(action="audit.events.purge").first()
            time.sleep(0.2)
    finally:
        worker.terminate()
        output = worker.communicate(timeout=30)[0]
    assert purge is not None, output
    assert purge.details["deleted"] == 4  # the organization's creation and the three old writes
    assert purge.request_id == "req-from-the-scheduler"
    with scoping.organization_scope(acme):
        assert not AuditEvent.objects.filter(action="test.old.write").exists()
    audit_chain_extend()
    with scoping.organization_scope(acme):
        assert chain.verify(acme.pk)[1] is None


def test_organization_task_runs_in_the_organizations_scope(acme, alice):
    from tenants.models import Membership

    @scoping.organization_task
    def count_members(organization):
        return organization.slug, Membership.objects.count()

    assert count_members(acme.pk) == ("acme", 1)
    assert not scoping.current().is_set  # and leaves nothing behind
