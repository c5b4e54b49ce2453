"""The hash chain: how an event's hash is computed, appended, and verified."""

import hashlib
import json
from dataclasses import dataclass

from django.db import connection

from audit.models import GENESIS_HASH, AuditChainAnchor, AuditEvent

# Advisory-lock namespace for "append to the audit chain of organization N".
_LOCK_NAMESPACE = 0x4155  # "AU"

HASHED_FIELDS = (
    "organization_id",
    "seq",
    "occurred_at",
    "actor_type",
    "actor_user_id",
    "actor_label",
    "actor_api_key_id",
    "actor_api_key_prefix",
    "action",
    "target_type",
    "target_id",
    "outcome",
    "ip",
    "user_agent",
    "request_id",
    "details",
)


def compute_hash(event: AuditEvent, prev_hash: str) -> str:
    values = {name: getattr(event, name) for name in HASHED_FIELDS}
    values["occurred_at"] = event.occurred_at.isoformat(timespec="microseconds")
    payload = json.dumps([prev_hash, values], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _lock_chain(organization_id: int | None) -> None:
    """Serialize appends to one chain until the transaction ends (PostgreSQL; SQLite has one writer)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_LOCK_NAMESPACE, organization_id or 0])


def chain_head(organization_id: int | None) -> tuple[int, str]:
    """The seq and hash the next event of this chain follows."""
    last = (
        AuditEvent.objects.filter(organization_id=organization_id).order_by("-seq").values_list("seq", "hash").first()
    )
    if last is None:
        last = (
            AuditChainAnchor.objects.filter(organization_id=organization_id)
            .order_by("-seq")
            .values_list("seq", "hash")
            .first()
        )
    return last or (0, GENESIS_HASH)


def append(event: AuditEvent) -> AuditEvent:
    """Give the event its place in its organization's chain and insert it. Call inside a transaction."""
    _lock_chain(event.organization_id)
    seq, prev_hash = chain_head(event.organization_id)
    event.seq = seq + 1
    event.prev_hash = prev_hash
    event.hash = compute_hash(event, prev_hash)
    event.save(force_insert=True)
    return event


@dataclass
class Break:
    organization_id: int | None
    event_id: int
    seq: int
    reason: str

    def as_dict(self) -> dict:
        return {"organization": self.organization_id, "event_id": self.event_id, "seq": self.seq, "reason": self.reason}


def verify(organization_id: int | None, *, chunk_size: int = 2000) -> tuple[int, Break | None]:
    """Walk one organization's chain in order; return (events checked, first break or None)."""
    anchor = (
        AuditChainAnchor.objects.filter(organization_id=organization_id)
        .order_by("-seq")
        .values_list("seq", "hash")
        .first()
    )
    expected_seq, expected_prev = (anchor[0] + 1, anchor[1]) if anchor else (1, GENESIS_HASH)
    checked, after = 0, 0
    events = AuditEvent.objects.filter(organization_id=organization_id).order_by("seq")
    while True:
        chunk = list(events.filter(seq__gt=after)[:chunk_size])
        if not chunk:
            return checked, None
        for event in chunk:
            if event.seq < expected_seq and anchor:
                return checked, Break(organization_id, event.pk, event.seq, "event_before_anchor")
            if event.seq != expected_seq:
                return checked, Break(organization_id, event.pk, event.seq, "missing_events")
            if event.prev_hash != expected_prev:
                return checked, Break(organization_id, event.pk, event.seq, "broken_link")
            if compute_hash(event, event.prev_hash) != event.hash:
                return checked, Break(organization_id, event.pk, event.seq, "hash_mismatch")
            checked += 1
            expected_seq, expected_prev = event.seq + 1, event.hash
        after = chunk[-1].seq
