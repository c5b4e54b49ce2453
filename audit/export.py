"""Streaming export of an organization's audit events as JSON Lines or CSV.

Rows are read in keyset-paginated chunks, each in its own short transaction under the caller's
organization, so memory stays flat and no transaction is held open while the client reads. Under
ASGI the chunks are fetched on a worker thread from an async iterator; Django would otherwise
buffer a synchronous iterator whole before sending it.
"""

import csv
import io
import json

from django.db import transaction

from agentapi.workers import in_worker
from audit.api.serializers import AuditEventSerializer
from tenants import scoping

CHUNK = 1000
CSV_COLUMNS = [
    "id",
    "seq",
    "occurred_at",
    "actor_type",
    "actor_user_id",
    "actor_label",
    "actor_api_key_prefix",
    "action",
    "target_type",
    "target_id",
    "outcome",
    "ip",
    "user_agent",
    "request_id",
    "details",
    "hash",
]


def _csv_cell(value) -> str:
    text = (
        json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else ("" if value is None else str(value))
    )
    # A cell a spreadsheet would read as a formula is made inert (CSV injection).
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv_line(row: list) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerow([_csv_cell(value) for value in row])
    return buffer.getvalue()


def _render(event, fmt: str) -> str:
    if fmt == "jsonl":
        return json.dumps(AuditEventSerializer(event).data, separators=(",", ":"), default=str) + "\n"
    return _csv_line([getattr(event, name) for name in CSV_COLUMNS])


def _fetch_chunk(organization, actor, filters, fmt: str, before: int | None) -> tuple[str, int | None]:
    from audit.models import AuditEvent

    with scoping.organization_scope(organization, actor=actor), transaction.atomic():
        events = filters.apply(AuditEvent.objects.all()).order_by("-id")
        if before is not None:
            events = events.filter(id__lt=before)
        chunk = list(events[:CHUNK])
    if not chunk:
        return "", None
    return "".join(_render(event, fmt) for event in chunk), chunk[-1].id


def header(fmt: str) -> str:
    return _csv_line(CSV_COLUMNS) if fmt == "csv" else ""


async def stream(organization, actor, filters, fmt: str):
    yield header(fmt)
    before = None
    while True:
        text, before = await in_worker(_fetch_chunk)(organization, actor, filters, fmt, before)
        if before is None:
            return
        yield text
