"""The audit log: written with the change, append-only in the database, tamper-evident."""

import csv
import io
import json
import threading
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections, transaction
from django.db.utils import DatabaseError
from django.utils import timezone

from audit import chain
from audit.models import AuditChainAnchor, AuditEvent
from audit.sequencer import audit_chain_extend
from audit.services import audit_record
from tenants import scoping, services
from tests.conftest import Api, committed, error_of, make_member, streamed


def owner_sql(sql: str, params=None):
    """Run SQL as the tables' owner with the append-only trigger disabled: a DBA behind our back."""
    with connections["owner"].cursor() as cursor, transaction.atomic(using="owner"):
        cursor.execute("SELECT set_config('app.all_organizations', 'on', true)")
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER append_only_rows")
        cursor.execute(sql, params or [])
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER append_only_rows")


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE audit_auditevent SET action = 'x'",
        "DELETE FROM audit_auditevent",
        "TRUNCATE audit_auditevent",
        "UPDATE audit_auditchainanchor SET hash = 'x'",
    ],
)
def test_the_application_role_cannot_rewrite_the_log(alice, acme, sql):
    with scoping.organization_scope(acme), pytest.raises(DatabaseError, match="permission denied"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)


@committed
def test_even_the_owner_cannot_update_or_delete_outside_maintenance(alice):
    for sql in ("UPDATE audit_auditevent SET action = 'x'", "DELETE FROM audit_auditevent"):
        with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(using="owner"):
            with connections["owner"].cursor() as cursor:
                cursor.execute("SELECT set_config('app.all_organizations', 'on', true)")
                cursor.execute(sql)


def test_the_event_commits_or_rolls_back_with_its_change(acme):
    with scoping.organization_scope(acme):
        with pytest.raises(RuntimeError), transaction.atomic():
            services.membership_create(organization=acme, email="ghost@acme.test", role="member")
            raise RuntimeError("the change fails after its event was written")
        assert not AuditEvent.objects.filter(action="tenants.membership.create").exists()


def test_events_carry_actor_request_and_outcome(alice_api, acme):
    alice_api.post("/api/v1/members/", {"email": "x@acme.test"}, **{"X-Request-ID": "req-42", "User-Agent": "tests/1"})
    with scoping.organization_scope(acme):
        event = AuditEvent.objects.get(action="tenants.membership.create", actor_type="api_key")
    assert (event.request_id, event.user_agent, event.ip) == ("req-42", "tests/1", "127.0.0.1")
    assert event.actor_label == "alice@acme.test" and event.actor_api_key_prefix.startswith("aak_")
    assert event.outcome == "success"


def test_secrets_never_reach_the_details(acme):
    with scoping.organization_scope(acme):
        event = audit_record(
            "test.secret.write",
            details={
                "client_secret": "s3cr3t",
                "nested": {"Authorization": "Bearer x", "password": "p"},
                "fine": "visible",
                "api_key": "aak_x",
            },
        )
    assert event.details == {
        "client_secret": "[redacted]",
        "nested": {"Authorization": "[redacted]", "password": "[redacted]"},
        "fine": "visible",
        "api_key": "[redacted]",
    }


def test_the_actor_snapshot_survives_the_users_deletion(alice_api, bob, acme):
    alice_api.delete(f"/api/v1/members/{bob.pk}/")
    from tenants.models import User

    services.user_delete(user=User.objects.get(email="alice@acme.test"))
    assert not User.objects.filter(email="alice@acme.test").exists()
    with scoping.organization_scope(acme):
        event = AuditEvent.objects.get(action="tenants.membership.delete", target_id=str(bob.pk))
        assert event.actor_label == "alice@acme.test"
    audit_chain_extend()
    with scoping.organization_scope(acme):
        assert chain.verify(acme.pk)[1] is None


def test_each_organization_has_its_own_unbroken_chain(alice, charlie, acme, globex):
    make_member(acme, "more@acme.test", "member")
    audit_chain_extend()
    for organization in (acme, globex):
        with scoping.organization_scope(organization):
            seqs = list(AuditEvent.objects.order_by("seq").values_list("seq", flat=True))
            assert seqs == list(range(1, len(seqs) + 1))
            checked, broken = chain.verify(organization.pk)
        assert broken is None and checked == len(seqs)


@committed
def test_concurrent_writers_keep_one_chain(acme):
    def write(n):
        try:
            with scoping.organization_scope(acme):
                for i in range(10):
                    audit_record("test.concurrent.write", details={"writer": n, "i": i})
        finally:
            connection.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    audit_chain_extend()
    with scoping.organization_scope(acme):
        assert AuditEvent.objects.filter(action="test.concurrent.write").count() == 40
        assert chain.verify(acme.pk) == (AuditEvent.objects.count(), None)


@committed
def test_tampering_behind_the_applications_back_is_found(alice, acme, alice_api):
    for i in range(5):
        with scoping.organization_scope(acme):
            audit_record("test.tamper.write", details={"i": i})
    audit_chain_extend()
    with scoping.organization_scope(acme):
        victim = AuditEvent.objects.filter(action="test.tamper.write").order_by("seq")[2]
    assert alice_api.get("/api/v1/audit/verify/").json()["ok"] is True
    call_command("verify_audit_log")

    owner_sql("UPDATE audit_auditevent SET details = %s WHERE id = %s", [json.dumps({"i": 99}), victim.pk])

    body = alice_api.get("/api/v1/audit/verify/").json()
    assert body["ok"] is False
    assert body["first_break"] == {
        "organization": acme.pk,
        "event_id": victim.pk,
        "seq": victim.seq,
        "reason": "hash_mismatch",
    }
    with pytest.raises(CommandError, match="broken"):
        call_command("verify_audit_log")


@committed
def test_a_deleted_event_breaks_the_chain(alice, acme):
    with scoping.organization_scope(acme):
        for i in range(3):
            audit_record("test.delete.write", details={"i": i})
    audit_chain_extend()
    with scoping.organization_scope(acme):
        victim = AuditEvent.objects.order_by("seq")[1]
    owner_sql("DELETE FROM audit_auditevent WHERE id = %s", [victim.pk])
    with scoping.organization_scope(acme):
        assert chain.verify(acme.pk)[1].reason == "missing_events"


@committed
def test_purge_removes_old_events_through_the_privileged_path_and_verification_still_passes(alice, acme):
    with scoping.organization_scope(acme):
        for i in range(4):
            audit_record("test.old.write", details={"i": i})
    audit_chain_extend()
    owner_sql("UPDATE audit_auditevent SET occurred_at = occurred_at - interval '40 days'")
    # The rewritten timestamps break the hashes; rehash as if these events were really old.
    with transaction.atomic(using="owner"), connections["owner"].cursor() as cursor:
        cursor.execute("SELECT set_config('app.all_organizations', 'on', true)")
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER append_only_rows")
        prev = "0" * 64
        for event in AuditEvent._base_manager.using("owner").filter(organization=acme).order_by("seq"):
            event.prev_hash, event.hash = prev, chain.compute_hash(event, prev)
            AuditEvent._base_manager.using("owner").filter(pk=event.pk).update(
                prev_hash=event.prev_hash, hash=event.hash
            )
            prev = event.hash
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER append_only_rows")
    with scoping.organization_scope(acme):
        audit_record("test.recent.write")
        total = AuditEvent.objects.count()
    audit_chain_extend()

    out = io.StringIO()
    call_command("purge_audit_events", "--older-than", "30", stdout=out)
    assert "Purged" in out.getvalue()

    audit_chain_extend()
    with scoping.organization_scope(acme):
        remaining = list(AuditEvent.objects.order_by("seq").values_list("action", flat=True))
        assert remaining == ["test.recent.write", "audit.events.purge"]
        assert AuditChainAnchor.objects.get().seq == total - 1
        assert chain.verify(acme.pk) == (2, None)
        purge = AuditEvent.objects.get(action="audit.events.purge")
    assert purge.details["deleted"] == total - 1
    call_command("verify_audit_log")


def test_purge_refuses_a_zero_age(db):
    with pytest.raises(CommandError):
        call_command("purge_audit_events", "--older-than", "0")


def test_the_event_list_filters_and_paginates(alice_api, acme, bob):
    for i in range(3):
        alice_api.post("/api/v1/api-keys/", {"name": f"k{i}"})
    listed = alice_api.get("/api/v1/audit/events/", {"action": "tenants.api_key.*", "page_size": 2}).json()
    assert [e["action"] for e in listed["results"]] == ["tenants.api_key.create"] * 2
    rest = (
        Api(alice_api.headers["Authorization"].split()[1]).client.get(listed["next"], headers=alice_api.headers).json()
    )
    assert len(rest["results"]) == 2 and rest["next"] is None  # 3 keys made here, 1 by the fixture
    by_outcome = alice_api.get("/api/v1/audit/events/", {"outcome": "denied"}).json()
    assert by_outcome["results"] == []
    by_actor = alice_api.get("/api/v1/audit/events/", {"actor": alice_api.get("/api/v1/me/").json()["user"]["id"]})
    assert {e["actor"]["label"] for e in by_actor.json()["results"]} == {"alice@acme.test"}
    by_target = alice_api.get("/api/v1/audit/events/", {"target_type": "tenants.membership", "target_id": str(bob.pk)})
    assert [e["action"] for e in by_target.json()["results"]] == ["tenants.membership.create"]
    future = (timezone.now() + timedelta(days=1)).isoformat()
    assert alice_api.get("/api/v1/audit/events/", {"since": future}).json()["results"] == []


@pytest.mark.parametrize(
    "params",
    [
        {"since": "yesterday"},
        {"outcome": "maybe"},
        {"action": "DROP TABLE"},
        {"actor": "x"},
        {"since": "2030-01-02T00:00:00Z", "until": "2030-01-01T00:00:00Z"},
        {"cursor": "garbage"},
    ],
)
def test_bad_filters_are_400_in_the_error_shape(alice_api, params):
    response = alice_api.get("/api/v1/audit/events/", params)
    assert response.status_code in (400, 404)
    error_of(response)


def test_members_cannot_read_the_log(bob_api):
    assert bob_api.get("/api/v1/audit/events/").status_code == 403
    assert bob_api.get("/api/v1/audit/verify/").status_code == 403
    assert bob_api.get("/api/v1/audit/events/export/").status_code == 403


def test_export_streams_jsonl_and_csv(alice_api, acme):
    for i in range(3):
        alice_api.post("/api/v1/members/", {"email": f"=cmd|{i}@acme.test" if i == 0 else f"m{i}@acme.test"})
    response = alice_api.get("/api/v1/audit/events/export/", {"action": "tenants.membership.create"})
    assert response.streaming and response["Content-Type"] == "application/jsonl"
    lines = [json.loads(line) for line in streamed(response).splitlines()]
    assert len(lines) == 4 and all(line["action"] == "tenants.membership.create" for line in lines)

    response = alice_api.get("/api/v1/audit/events/export/", {"format": "csv"})
    rows = list(csv.reader(io.StringIO(streamed(response))))
    assert rows[0][:3] == ["id", "seq", "occurred_at"]
    with scoping.organization_scope(acme):
        assert len(rows) - 1 == AuditEvent.objects.count()
    assert all(not cell.startswith("=") for row in rows for cell in row)


def test_export_reads_in_chunks(alice_api, acme, monkeypatch):
    from audit import export

    monkeypatch.setattr(export, "CHUNK", 2)
    with scoping.organization_scope(acme):
        for i in range(5):
            audit_record("test.chunk.write", details={"i": i})
        total = AuditEvent.objects.count()
    lines = streamed(alice_api.get("/api/v1/audit/events/export/")).splitlines()
    assert len(lines) == total
    assert [json.loads(line)["id"] for line in lines] == sorted(
        (json.loads(line)["id"] for line in lines), reverse=True
    )


def test_export_refuses_an_unknown_format(alice_api):
    response = alice_api.get("/api/v1/audit/events/export/", {"format": "xml"})
    assert response.status_code == 400 and "format" in error_of(response)["details"]
