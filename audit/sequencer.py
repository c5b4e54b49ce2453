"""The one writer of the audit log's hash chains.

Requests write their events with one INSERT and no lock (audit.services.audit_record): nothing on a
request's path waits for another request's event. The sequencer then gives each waiting event its
place in its organization's chain, oldest first (by id), in batches: the Celery beat job
`audit.tasks.audit_chain_extend` runs it every AUDIT_SEQUENCER_INTERVAL seconds, and
`manage.py verify_audit_log --chain-first` runs it once.

One at a time, however many workers run it: each batch holds a transaction-scoped advisory lock
that a second run does not wait for (it finds the lock taken and returns). On SQLite the write
transaction itself is exclusive. A crash mid-batch rolls the batch back; the events stay waiting
and the next run chains them. Ids are handed out before transactions commit, so an event may
commit after a later one was chained: it is then chained after it, and the chain's order (seq) is
the order of chaining, which verification walks.
"""

from django.db import connection, transaction
from django.utils import timezone

from agentapi.db.scope import DatabaseScope, use_scope
from audit import chain
from audit.models import AuditEvent, ToolCallHour
from tenants import scoping

# Advisory-lock key of the sequencer ("AU", "SQ").
_LOCK = (0x4155, 0x5351)
BATCH_SIZE = 2000


def audit_chain_extend(*, batch_size: int = BATCH_SIZE, max_batches: int = 50) -> int:
    """Chain waiting events; returns how many. Returns 0 at once when another run holds the lock."""
    total = 0
    # Every chain is the sequencer's to extend; it is the platform's own writer, so the crossing
    # is not itself recorded (it would add an event per second).
    with (
        scoping.dangerously_all_organizations(reason="audit sequencer", record=False),
        use_scope(DatabaseScope(all_organizations=True)),
    ):
        for _ in range(max_batches):
            chained = _extend_batch(batch_size)
            if chained is None:
                break
            total += chained
            if chained < batch_size:
                break
    return total


def _locked() -> bool:
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", list(_LOCK))
        return cursor.fetchone()[0]


def _extend_batch(batch_size: int) -> int | None:
    with transaction.atomic():
        if not _locked():
            return None
        events = list(AuditEvent._base_manager.filter(hash__isnull=True).order_by("id")[:batch_size])
        if not events:
            return 0
        heads: dict[int | None, tuple[int, str]] = {}
        now = timezone.now()
        rows = []
        for event in events:
            organization_id = event.organization_id
            if organization_id not in heads:
                heads[organization_id] = chain.chain_head(organization_id)
            seq, prev_hash = heads[organization_id]
            event.seq, event.prev_hash = seq + 1, prev_hash
            event.hash = chain.compute_hash(event, prev_hash)
            heads[organization_id] = (event.seq, event.hash)
            rows.append((event.seq, event.prev_hash, event.hash, now, event.pk))
        table = AuditEvent._meta.db_table
        with connection.cursor() as cursor:
            # `hash IS NULL`: an event is chained once; the trigger refuses anything else anyway.
            cursor.executemany(
                f'UPDATE "{table}" SET seq = %s, prev_hash = %s, hash = %s, chained_at = %s '  # noqa: S608
                "WHERE id = %s AND hash IS NULL",
                rows,
            )
            _add_tool_calls(cursor, events)
        return len(rows)


def _add_tool_calls(cursor, events) -> None:
    """Count the batch's tool calls into their servers' hours (audit.models.ToolCallHour), in the
    chaining transaction: an event is chained once, so it is counted once."""
    hours: dict[tuple[int, str, object], list[int]] = {}
    for event in events:
        if event.action == "mcp.tool.call" and event.organization_id is not None:
            hour = event.occurred_at.replace(minute=0, second=0, microsecond=0)
            counts = hours.setdefault((event.organization_id, event.target_id, hour), [0, 0])
            counts[0] += 1
            counts[1] += event.outcome != "success"
    if not hours:
        return
    table = ToolCallHour._meta.db_table
    cursor.executemany(
        f'INSERT INTO "{table}" (organization_id, target_id, hour, calls, errors) VALUES (%s, %s, %s, %s, %s) '  # noqa: S608
        f'ON CONFLICT (organization_id, target_id, hour) DO UPDATE SET calls = "{table}".calls + excluded.calls, '
        f'errors = "{table}".errors + excluded.errors',
        [(*key, calls, errors) for key, (calls, errors) in hours.items()],
    )


def tool_call_hours_purge(*, keep_days: int = 2) -> int:
    """Remove the hourly tool-call counts older than `keep_days` (the console shows the last day)."""
    from datetime import timedelta

    cutoff = timezone.now() - timedelta(days=keep_days)
    with (
        scoping.dangerously_all_organizations(reason="purge old tool call counts", record=False),
        use_scope(DatabaseScope(all_organizations=True)),
    ):
        deleted, _ = ToolCallHour._base_manager.filter(hour__lt=cutoff).delete()
    return deleted
