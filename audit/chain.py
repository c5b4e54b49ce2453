"""The hash chain: how an event's hash is computed, and how a chain is verified.

Events are chained after they are written, by one writer (audit.sequencer); verification walks
what is chained and reports what still waits.
"""

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime

from django.db.models import Count, Min
from django.utils import timezone

from audit.models import GENESIS_HASH, AuditChainAnchor, AuditEvent

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


def chain_head(organization_id: int | None) -> tuple[int, str]:
    """The seq and hash the next event of this chain follows."""
    last = (
        AuditEvent.objects.filter(organization_id=organization_id, seq__isnull=False)
        .order_by("-seq")
        .values_list("seq", "hash")
        .first()
    )
    if last is None:
        last = (
            AuditChainAnchor.objects.filter(organization_id=organization_id)
            .order_by("-seq")
            .values_list("seq", "hash")
            .first()
        )
    return last or (0, GENESIS_HASH)


@dataclass(frozen=True)
class Waiting:
    """Events written but not chained yet, and when the oldest of them happened."""

    count: int
    oldest: datetime | None

    def as_dict(self) -> dict:
        age = (timezone.now() - self.oldest).total_seconds() if self.oldest else None
        return {"pending": self.count, "oldest_pending_seconds": None if age is None else round(max(age, 0.0), 3)}


def waiting(organization_id: int | None = None, *, every_chain: bool = False) -> Waiting:
    """What the sequencer has still to chain: in one organization's chain, or in all (every_chain)."""
    events = AuditEvent.objects.filter(hash__isnull=True)
    if not every_chain:
        events = events.filter(organization_id=organization_id)
    found = events.aggregate(count=Count("id"), oldest=Min("occurred_at"))
    return Waiting(found["count"], found["oldest"])


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
    events = AuditEvent.objects.filter(organization_id=organization_id, seq__isnull=False).order_by("seq")
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
