"""Recording audit events, in the same transaction as the change they describe.

Recording is one INSERT that takes no lock: the event enters its organization's hash chain a
moment later, when the sequencer (audit.sequencer) chains it. `audit_event_fields` is what both
planes record: the management plane inserts it through the ORM here, the data plane through its
async database module (agentapi.db.aio).
"""

import functools
import json
import re

from django.utils import timezone

from agentapi import context as request_context
from agentapi.db import aio
from agentapi.db.scope import DatabaseScope, use_scope
from audit.models import ActorType, AuditEvent, Outcome
from tenants import scoping

# Keys whose values never enter the log, whatever their nesting.
_SECRET_KEY = re.compile(
    r"(pass(word)?|secret|token|api[_-]?key|^key$|authorization|cookie|credential|private|bearer|signature)",
    re.IGNORECASE,
)
REDACTED = "[redacted]"
_MAX_DETAILS_BYTES = 8192


def scrub(value):
    """Details as plain JSON with every secret-looking key's value replaced."""
    if isinstance(value, dict):
        return {str(key): (REDACTED if _SECRET_KEY.search(str(key)) else scrub(item)) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(item) for item in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _details(details: dict | None) -> dict:
    cleaned = json.loads(json.dumps(scrub(details or {}), default=str))
    if len(json.dumps(cleaned)) > _MAX_DETAILS_BYTES:
        return {"truncated": True, "keys": sorted(cleaned)[:50]}
    return cleaned


def _actor_fields(actor: scoping.Actor) -> dict:
    return {
        "actor_type": actor.kind if actor.kind in ActorType.values else ActorType.SYSTEM,
        "actor_user_id": actor.user_id,
        "actor_label": actor.label[:254],
        "actor_api_key_id": actor.api_key_id,
        "actor_api_key_prefix": actor.api_key_prefix,
    }


def _request_fields() -> dict:
    current = request_context.current()
    if current is None:
        return {"ip": "", "user_agent": "", "request_id": ""}
    return {"ip": current.ip or "", "user_agent": current.user_agent, "request_id": current.request_id}


def _target(target) -> tuple[str, str]:
    if target is None:
        return "", ""
    if isinstance(target, tuple):
        return str(target[0])[:100], str(target[1])[:64]
    return target._meta.label_lower, str(target.pk)


def audit_event_fields(
    action: str,
    *,
    target=None,
    outcome: str = Outcome.SUCCESS,
    details: dict | None = None,
    organization_id: int | None = None,
    actor: scoping.Actor | None = None,
) -> dict:
    """The event's columns (unchained), for the organization in scope unless one is given."""
    state = scoping.current()
    if organization_id is None and target is not None and not isinstance(target, tuple):
        # The row's own organization: under a scope of several (staff or an operator in the admin)
        # there is no single organization in scope to take it from.
        organization_id = getattr(target, "organization_id", None)
    if organization_id is None and state.organization is not None:
        organization_id = state.organization.pk
    target_type, target_id = _target(target)
    return {
        "organization_id": organization_id,
        "occurred_at": timezone.now(),
        "action": action,
        "target_type": target_type,
        "target_id": target_id,
        "outcome": outcome,
        "details": _details(details),
        **_actor_fields(actor or state.actor),
        **_request_fields(),
    }


def event_scope(organization_id: int | None) -> DatabaseScope:
    """The database scope an event is written in: its own organization, or the platform chain.

    The audit writer is the one component that writes to chains of any organization (a failed
    sign-in names no organization in scope), and it sets nothing wider than the event's own.
    """
    if organization_id is None:
        return DatabaseScope(all_organizations=True)
    return DatabaseScope(organization_ids=(organization_id,))


def audit_record(action: str, **kwargs) -> AuditEvent:
    """Write an event (see audit_event_fields for the arguments): one INSERT, no lock.

    Joins the caller's transaction, if any: when the change it records rolls back, so does the
    event. Outside one (autocommit) it is committed when this returns.
    """
    event = AuditEvent(**audit_event_fields(action, **kwargs))
    with (
        scoping.dangerously_all_organizations(reason="audit write", record=False),
        use_scope(event_scope(event.organization_id)),
    ):
        event.save(force_insert=True)
    return event


async def audit_record_async(action: str, *, also: list | None = None, **kwargs) -> None:
    """audit_record for the data plane: the same event, one INSERT through agentapi.db.aio,
    committed when this returns. `also`: statements of the change it records, run in the same
    transaction (in the event's organization's scope)."""
    fields = audit_event_fields(action, **kwargs)
    fields["prev_hash"] = ""
    statement = _insert_statement(tuple(fields))
    await aio.run(event_scope(fields["organization_id"]), [(statement, list(fields.values())), *(also or [])])


@functools.cache
def _insert_statement(names: tuple[str, ...]) -> aio.Statement:
    return aio.Statement(f"agentapi_audit_insert_{len(names)}", aio.insert_sql(AuditEvent, list(names)))


def audit_chain_verify(organization_id: int) -> tuple[int, object]:
    """Walk the organization's hash chain (audit.chain.verify) and put the verification itself on
    record (`audit.chain.verify`, failure when a link is broken): the console shows the last one.
    Returns (events checked, first break or None)."""
    from audit import chain

    checked, first_break = chain.verify(organization_id)
    audit_record(
        "audit.chain.verify",
        organization_id=organization_id,
        outcome=Outcome.FAILURE if first_break else Outcome.SUCCESS,
        details={"checked": checked, "first_break": first_break.as_dict() if first_break else None},
    )
    return checked, first_break
