"""What the audit app records on behalf of the layers below it (registered in AuditConfig.ready).

Changes are recorded at once, inside the change's transaction. Security events (failed sign-ins,
lookups that may have reached into another organization) are held until the response is made and
written then, in a transaction of their own, because the request's transaction rolls back on the
very error they describe.
"""

import logging
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar

from django.apps import apps
from django.db import transaction

from agentapi.db.scope import DatabaseScope, use_scope
from audit.models import Outcome
from audit.services import audit_record
from tenants import scoping

logger = logging.getLogger(__name__)
_pending: ContextVar[list | None] = ContextVar("agentapi_pending_security_events", default=None)

ANONYMOUS = scoping.Actor(kind="anonymous", label="anonymous")


def record_change(action, *, target, details, organization=None):
    audit_record(action, target=target, details=details, organization_id=organization.pk if organization else None)


def record_crossing(*, reason, actor):
    audit_record("tenants.scope.cross_organizations", details={"reason": reason}, actor=actor, organization_id=None)


def record_security_event(kind, **facts):
    state = scoping.current()
    pending = _pending.get()
    if pending is None:
        _write(kind, facts, state)
    else:
        pending.append((kind, facts, state))


@contextmanager
def deferred_security_events():
    """Hold the security events of the request inside, and write them, each in its own
    transaction, once it is done."""
    pending = []
    token = _pending.set(pending)
    try:
        yield
    finally:
        _pending.reset(token)
        _write_all(pending)


@asynccontextmanager
async def deferred_security_events_async():
    """deferred_security_events for the data plane: the events are written by the same code, on
    a worker thread (they are rare: a refused credential, a lookup into another organization)."""
    from agentapi.workers import in_worker

    pending = []
    token = _pending.set(pending)
    try:
        yield
    finally:
        _pending.reset(token)
        if pending:
            await in_worker(_write_all)(pending)


def _write_all(pending):
    for kind, facts, state in pending:
        try:
            _write(kind, facts, state)
        except Exception:  # the response is already decided; never turn it into a 500
            logger.exception("Could not record a security event", extra={"kind": kind})


def _write(kind, facts, state):
    with transaction.atomic():
        if kind == "authentication_failed":
            _write_authentication_failure(facts)
        elif kind == "lookup_denied":
            _write_denied_lookup(facts, state)


def _write_authentication_failure(facts):
    prefix = facts.get("prefix", "")
    actor = scoping.Actor(kind="anonymous", label="anonymous", api_key_prefix=prefix)
    audit_record(
        "tenants.authentication.fail",
        outcome=Outcome.FAILURE,
        actor=actor,
        organization_id=facts.get("organization_id"),
        details={"reason": facts.get("reason"), "credential": facts.get("credential")},
    )


def _owner_organization(label: str, pk) -> int | None:
    """The organization that owns the row, looked at across organizations by the audit writer."""
    try:
        model = apps.get_model(label)
        pk = int(pk)
    except (LookupError, TypeError, ValueError):
        return None
    if not -(2**63) <= pk < 2**63:
        return None
    with use_scope(DatabaseScope(all_organizations=True)):
        return model._base_manager.filter(pk=pk).values_list("organization_id", flat=True).first()


def _write_denied_lookup(facts, state):
    caller = state.organization.pk if state.organization is not None else None
    owner = _owner_organization(facts["model"], facts["pk"])
    if owner is None or owner == caller:
        return  # it does not exist anywhere: an ordinary not-found, nothing to record
    audit_record(
        "tenants.cross_organization.deny",
        outcome=Outcome.DENIED,
        actor=state.actor,
        organization_id=None,  # the platform's chain: neither tenant learns of the other
        target=(facts["model"].lower(), facts["pk"]),
        details={"caller_organization": caller, "target_organization": owner},
    )
