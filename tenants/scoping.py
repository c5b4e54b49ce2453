"""Tenant scoping that fails closed.

The organization a unit of work acts for is held in one ContextVar and set in exactly one place
per entry point: the API base view (tenants.api.views.TenantAPIViewMixin.initial), the admin
(tenants.middleware), Celery tasks (`organization_task`) and commands (`organization_scope`).
Everything below reads it: the default manager of every tenant model refuses to query without it,
and the PostgreSQL backend copies it into the settings that row-level security policies read.

Crossing organizations is possible only through `dangerously_all_organizations(reason=...)`,
which is recorded in the audit log. This layer is a convenience that makes the right query the
easy one; row-level security is the boundary that holds when code forgets.
"""

import functools
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace

from agentapi import context as request_context
from agentapi.db.scope import DatabaseScope, use_scope


class OrganizationNotSet(RuntimeError):
    """A tenant model was queried with no organization in scope."""


@dataclass(frozen=True)
class Actor:
    """Who is acting, as the audit log records it. Snapshots survive the user's deletion."""

    kind: str = "system"  # "user", "api_key" or "system"
    user_id: int | None = None
    label: str = "system"  # e-mail address, or "system"
    api_key_id: int | None = None
    api_key_prefix: str = ""


SYSTEM = Actor()


@dataclass(frozen=True)
class TenantState:
    organization: object | None = None  # the Organization of a request, task or command
    organization_ids: tuple[int, ...] = ()
    all_organizations: bool = False
    actor: Actor = SYSTEM

    @property
    def is_set(self) -> bool:
        return self.all_organizations or bool(self.organization_ids)


_state: ContextVar[TenantState] = ContextVar("agentapi_tenant_state", default=TenantState())  # noqa: B039 (frozen)
_crossing_recorders: list = []


def current() -> TenantState:
    return _state.get()


def current_organization():
    """The organization in scope; raises OrganizationNotSet when there is none (or several)."""
    organization = _state.get().organization
    if organization is None:
        raise OrganizationNotSet("No organization is in scope.")
    return organization


def require_scope() -> TenantState:
    state = _state.get()
    if not state.is_set:
        raise OrganizationNotSet(
            "Tenant models need an organization in scope: use organization_scope() or, to cross "
            "organizations deliberately, dangerously_all_organizations(reason=...)."
        )
    return state


@contextmanager
def _enter(state: TenantState, *, user_id: int | None = None):
    token = _state.set(state)
    db_scope = DatabaseScope(
        organization_ids=state.organization_ids,
        all_organizations=state.all_organizations,
        user_id=user_id if user_id is not None else state.actor.user_id,
    )
    if state.organization is not None:
        request_context.annotate(organization=state.organization.slug)
    try:
        with use_scope(db_scope):
            yield state
    finally:
        _state.reset(token)


@contextmanager
def organization_scope(organization, *, actor: Actor | None = None):
    """Act for one organization (a request, a task, a command)."""
    state = TenantState(
        organization=organization,
        organization_ids=(organization.pk,),
        actor=actor or _state.get().actor,
    )
    with _enter(state):
        yield state


@contextmanager
def organizations_scope(organization_ids, *, actor: Actor | None = None):
    """Act within several organizations at once: an organization admin's view of the admin site."""
    state = TenantState(organization_ids=tuple(sorted(organization_ids)), actor=actor or _state.get().actor)
    with _enter(state):
        yield state


@contextmanager
def dangerously_all_organizations(*, reason: str, record: bool = True, actor: Actor | None = None):
    """See every organization's rows. Recorded in the audit log with the reason given.

    For platform operators and platform-wide jobs only; never on a path a tenant's request drives
    without an operator's role checked first. `actor`: who acts (an operator in the admin); what is
    recorded within is theirs, the crossing too.
    """
    state = replace(_state.get(), all_organizations=True, **({"actor": actor} if actor is not None else {}))
    if record:
        for recorder in _crossing_recorders:
            recorder(reason=reason, actor=state.actor)
    with _enter(state):
        yield state


def on_crossing(recorder) -> None:
    """Register a callable(reason=, actor=) run on every crossing (the audit app registers one)."""
    if recorder not in _crossing_recorders:
        _crossing_recorders.append(recorder)


def organization_task(func):
    """Decorate a Celery task whose first argument is an organization id: it runs in that scope."""

    @functools.wraps(func)
    def wrapper(organization_id, *args, **kwargs):
        from tenants.models import Organization

        organization = Organization.objects.get(pk=organization_id)
        with organization_scope(organization):
            return func(organization, *args, **kwargs)

    return wrapper
