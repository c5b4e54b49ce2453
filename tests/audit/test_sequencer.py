"""The sequencer: events are written unchained with one insert, and one writer chains them."""

import threading

import pytest
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction

from audit import chain, sequencer
from audit.models import AuditEvent
from audit.services import audit_record
from tenants import scoping
from tests.conftest import committed


def test_it_writes_an_event_unchained_and_the_sequencer_chains_it(alice_api, acme):
    with scoping.organization_scope(acme):
        event = audit_record("test.sequencer.write")
        assert (event.seq, event.hash) == (None, None)
        waiting = chain.waiting(acme.pk)
        assert waiting.count == AuditEvent.objects.count() > 0
    body = alice_api.get("/api/v1/audit/verify/").json()
    assert body["pending"] == waiting.count and body["oldest_pending_seconds"] >= 0

    assert sequencer.audit_chain_extend() >= waiting.count
    with scoping.organization_scope(acme):
        event.refresh_from_db()
        assert event.seq is not None and event.chained_at is not None
        assert chain.verify(acme.pk) == (AuditEvent.objects.count(), None)
    body = alice_api.get("/api/v1/audit/verify/").json()
    assert (body["ok"], body["pending"], body["oldest_pending_seconds"]) == (True, 0, None)


def test_it_chains_in_batches_and_continues_each_chain(acme, globex):
    for organization in (acme, globex):
        with scoping.organization_scope(organization):
            for i in range(7):
                audit_record("test.batch.write", details={"i": i})
    sequencer.audit_chain_extend(batch_size=3)
    for organization in (acme, globex):
        with scoping.organization_scope(organization):
            audit_record("test.batch.later")
    sequencer.audit_chain_extend(batch_size=3)
    for organization in (acme, globex):
        with scoping.organization_scope(organization):
            seqs = list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True))
            assert seqs == list(range(1, len(seqs) + 1))
            assert chain.verify(organization.pk) == (len(seqs), None)
            assert AuditEvent.objects.order_by("-seq").first().action == "test.batch.later"


def test_the_application_role_may_fill_in_a_chain_once_and_nothing_else(acme):
    with scoping.organization_scope(acme):
        waiting = audit_record("test.fill.write")
        chained = audit_record("test.fill.chained")
    sequencer.audit_chain_extend()
    with scoping.organization_scope(acme):
        waiting = audit_record("test.fill.waiting")
        chained.refresh_from_db()
        fill = "UPDATE audit_auditevent SET seq = 999, prev_hash = %s, hash = %s WHERE id = %s"
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cur:
            cur.execute(fill, ["0" * 64, "f" * 64, chained.pk])  # a chained event: never again
        with pytest.raises(DatabaseError, match="permission denied"), transaction.atomic():
            with connection.cursor() as cur:
                cur.execute("UPDATE audit_auditevent SET action = 'x', hash = %s WHERE id = %s", ["f" * 64, waiting.pk])
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cur:
            cur.execute("UPDATE audit_auditevent SET prev_hash = %s WHERE id = %s", ["0" * 64, waiting.pk])  # no hash
        with transaction.atomic(), connection.cursor() as cur:  # the sequencer's own update: allowed once
            cur.execute(fill, ["0" * 64, "e" * 64, waiting.pk])
            transaction.set_rollback(True)


@committed
def test_a_second_run_does_not_wait_for_the_first_and_chains_nothing(acme):
    with scoping.organization_scope(acme):
        audit_record("test.single.write")
    held = threading.Event()
    release = threading.Event()

    def hold_the_lock():
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", list(sequencer._LOCK))
                held.set()
                release.wait(10)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        assert held.wait(10)
        assert sequencer.audit_chain_extend() == 0
        with scoping.organization_scope(acme):
            assert chain.waiting(acme.pk).count > 0
    finally:
        release.set()
        holder.join()
    assert sequencer.audit_chain_extend() > 0


@committed
def test_concurrent_runs_under_concurrent_writers_keep_every_chain_whole(acme, globex):
    stop = threading.Event()
    errors = []

    def write(organization, n):
        try:
            with scoping.organization_scope(organization):
                for i in range(40):
                    audit_record("test.race.write", details={"writer": n, "i": i})
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    def chain_repeatedly():
        try:
            while not stop.is_set():
                sequencer.audit_chain_extend(batch_size=7)
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    writers = [threading.Thread(target=write, args=(org, n)) for n in range(3) for org in (acme, globex)]
    sequencers = [threading.Thread(target=chain_repeatedly) for _ in range(2)]
    for thread in writers + sequencers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in sequencers:
        thread.join()
    assert errors == []
    sequencer.audit_chain_extend()
    for organization in (acme, globex):
        with scoping.organization_scope(organization):
            assert AuditEvent.objects.filter(action="test.race.write").count() == 120
            assert chain.waiting(organization.pk).count == 0
            assert chain.verify(organization.pk) == (AuditEvent.objects.count(), None)


@committed
def test_verify_audit_log_reports_waiting_events_and_can_chain_them_first(acme, capsys):
    with scoping.organization_scope(acme):
        audit_record("test.command.write")
    call_command("verify_audit_log")
    assert "Waiting to be chained: " in capsys.readouterr().out
    call_command("verify_audit_log", "--chain-first")
    out = capsys.readouterr().out
    # Chained: the write, the first run's record of crossing organizations and its record of each
    # chain it verified (acme's, the platform's). What waits afterwards is the second run's crossing.
    assert "Chained 5 waiting event(s)." in out and "Waiting to be chained: 1 " in out
    with scoping.organization_scope(acme):
        assert AuditEvent.objects.filter(action="audit.chain.verify", outcome="success").count() == 2


def test_tool_calls_are_counted_into_their_hours_once_as_they_are_chained(acme, globex):
    from audit.models import ToolCallHour
    from mcp.models import MCPConfiguration

    for organization, outcomes in ((acme, ["success", "success", "failure", "denied"]), (globex, ["success"])):
        with scoping.organization_scope(organization):
            server = MCPConfiguration.objects.create(organization=organization, name="s", url="http://127.0.0.1:9/")
            for outcome in outcomes:
                audit_record("mcp.tool.call", target=server, organization_id=organization.pk, outcome=outcome)
            audit_record("mcp.configuration.update", target=server, organization_id=organization.pk)
    with scoping.organization_scope(acme):
        assert not ToolCallHour.objects.exists()  # not chained yet: not counted yet
    sequencer.audit_chain_extend(batch_size=3)  # batches split the calls: each is counted once
    sequencer.audit_chain_extend()
    with scoping.organization_scope(acme):
        rows = list(ToolCallHour.objects.values_list("calls", "errors"))
    assert rows == [(4, 2)]  # one server, one hour: 4 calls, a failure and a refusal
    with scoping.organization_scope(globex):
        assert list(ToolCallHour.objects.values_list("calls", "errors")) == [(1, 0)]  # its own only

    # The daily retention job drops counts older than two days, every organization's.
    from datetime import timedelta

    from django.utils import timezone

    from audit.tasks import audit_events_purge_expired

    with scoping.dangerously_all_organizations(reason="test", record=False):
        ToolCallHour.objects.update(hour=timezone.now() - timedelta(days=3))
    audit_events_purge_expired()
    with scoping.dangerously_all_organizations(reason="test", record=False):
        assert not ToolCallHour.objects.exists()
