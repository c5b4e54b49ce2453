"""Agent sessions: opening one (servers, the composed prompt, a session token), listing, closing.

The per-user limit (`max_sessions_per_user`, an organization setting) is checked under a lock on
the member's own row, so concurrent creates by one user queue there and the count they see is
exact (20 at once at a limit of 3 make exactly 3); other users are not held up.

The session token (`mcp_token`) is for the session's MCP endpoint: shown once when the session is
made, kept as its SHA-256 only, valid for that session only and ending with it.
"""

import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models, transaction
from django.utils import timezone

from agentapi.errors import APIError
from audit.services import audit_record
from mcp import services as mcp_services
from sessions_app import agents, liveness, naming, prompts, workspaces
from sessions_app.models import AgentSession, SessionServer, SessionStatus
from tenants.authentication import Principal
from tenants.models import MANAGER_ROLES, Membership

SESSION_TOKEN_PREFIX = "ast_"


def hash_session_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def visible_to(principal: Principal, *, user_id: int | None = None):
    """Sessions the caller sees: their own; owners and admins see every member's (or one's)."""
    sessions = AgentSession.objects.all()
    if principal.role not in MANAGER_ROLES:
        return sessions.filter(user_id=principal.membership.user_id)
    return sessions.filter(user_id=user_id) if user_id is not None else sessions


def own_sessions(principal: Principal):
    """The caller's own sessions: the only ones whose tools they may use (with their own
    credentials; an owner does not act as another member through that member's session)."""
    return AgentSession.objects.filter(user_id=principal.membership.user_id)


def _configurations(principal: Principal, ids: list[int] | None):
    usable = mcp_services.configurations_visible_to(principal).filter(enabled=True)
    if ids is None:
        return list(usable.order_by("id"))
    found = {configuration.pk: configuration for configuration in usable.filter(pk__in=ids)}
    unknown = [pk for pk in ids if pk not in found]
    if unknown:
        raise APIError(
            "invalid",
            "These MCP configurations do not exist, are disabled, or are not yours to use.",
            details={"mcp_configurations": unknown},
        )
    return [found[pk] for pk in dict.fromkeys(ids)]


@transaction.atomic
def session_create(
    *, principal: Principal, name: str = "", mcp_configurations=None, metadata=None, variables=None, agent=None
) -> tuple[AgentSession, str]:
    """Open a session for the caller. Returns it and its session token (never stored)."""
    # The member's own row, locked: concurrent creates by this user queue here.
    Membership.objects.select_for_update().filter(pk=principal.membership.pk).first()
    limit = principal.organization.limit("max_sessions_per_user")
    now = timezone.now()
    open_sessions = AgentSession.objects.filter(
        user_id=principal.membership.user_id, status=SessionStatus.ACTIVE, expires_at__gt=now, ends_at__gt=now
    ).count()  # past its time, a session no longer counts, whether or not the expiry job has run
    if open_sessions >= limit:
        raise APIError(
            "session_limit_reached",
            f"You have {open_sessions} open sessions, the most this organization allows ({limit}).",
            status=409,
        )
    configurations = _configurations(principal, mcp_configurations)
    backend = agents.usable(principal, agent) if agent is not None else None
    composed = prompts.compose(
        principal=principal,
        variables=variables or {},
        session_metadata=metadata or {},
        tool_names=(),  # the session's tools are listed once its servers answer (the tools API)
    )
    token = SESSION_TOKEN_PREFIX + secrets.token_urlsafe(32)
    ends_at = now + timedelta(seconds=settings.SESSION_MAX_AGE_SECONDS)
    session = AgentSession.objects.create(
        organization=principal.organization,
        user_id=principal.membership.user_id,
        name=name,
        agent=backend,
        system_prompt=composed["prompt"],
        prompt_layers=composed["layers"],
        metadata=metadata or {},
        mcp_token_hash=hash_session_token(token),
        last_active_at=now,
        expires_at=min(now + timedelta(seconds=settings.SESSION_IDLE_TTL_SECONDS), ends_at),
        ends_at=ends_at,
    )
    taken: set[str] = set()
    servers = []
    for configuration in configurations:
        prefix = naming.prefix_for(configuration.name, taken)
        taken.add(prefix)
        servers.append(
            SessionServer(
                organization=principal.organization, session=session, configuration=configuration, prefix=prefix
            )
        )
    SessionServer.objects.bulk_create(servers)
    workspaces.create(session)

    audit_record(
        "session.create",
        target=session,
        organization_id=session.organization_id,
        details={
            "user_id": session.user_id,
            "agent": session.agent_id,
            "mcp_configurations": [configuration.pk for configuration in configurations],
            "prompt_layers": [[layer["id"], layer["version"]] for layer in composed["layers"]],
        },
    )
    return session, token


@transaction.atomic
def session_close(*, session: AgentSession, reason: str = "closed") -> AgentSession:
    """End a session (closed by its user or a manager, or expired); audited. Idempotent."""
    if session.status != SessionStatus.ACTIVE:
        return session
    session.status = SessionStatus.EXPIRED if reason == "expired" else SessionStatus.CLOSED
    session.closed_at = timezone.now()
    session.mcp_token_hash = session.agent_token_hash = ""  # its tokens end with it
    session.save(update_fields=["status", "closed_at", "mcp_token_hash", "agent_token_hash"])
    # Its workspace goes once the end is committed; its stdio servers follow (mcp.pool).
    transaction.on_commit(lambda: workspaces.remove(session))
    audit_record(
        f"session.{session.status}",
        target=session,
        organization_id=session.organization_id,  # the admin may act across organizations
        details={"user_id": session.user_id},
    )
    return session


@transaction.atomic
def session_extend(*, session: AgentSession) -> AgentSession:
    """Give an active session another idle period (never past its maximum age); audited."""
    if session.current_status(timezone.now()) != SessionStatus.ACTIVE:
        raise APIError("session_not_active", "Only an active session can be extended.", status=409)
    session.expires_at = min(timezone.now() + timedelta(seconds=settings.SESSION_IDLE_TTL_SECONDS), session.ends_at)
    session.save(update_fields=["expires_at"])
    audit_record(
        "session.extend",
        target=session,
        organization_id=session.organization_id,
        details={"expires_at": session.expires_at.isoformat()},
    )
    return session


def expire_due() -> dict:
    """The scheduled job (and `manage.py cleanup_sessions`): every active session past its idle
    time or maximum age becomes `expired`, audited, organization by organization, unless Redis
    says it was used within its idle time (then its row is brought up to date). Returns counts."""
    from tenants import scoping
    from tenants.models import Organization

    now = timezone.now()
    counts = {"expired": 0, "slid": 0}
    for organization in Organization.objects.all():
        with scoping.organization_scope(organization):
            due = AgentSession.objects.filter(status=SessionStatus.ACTIVE).filter(
                models.Q(expires_at__lte=now) | models.Q(ends_at__lte=now)
            )
            due = list(due)
            seen = liveness.last_seen([session.pk for session in due])
            for session in due:
                used = seen.get(str(session.pk))
                slid = used + timedelta(seconds=settings.SESSION_IDLE_TTL_SECONDS) if used else None
                if slid is not None and slid > now and session.ends_at > now:
                    # Used since its row was last written (sessions_app.liveness): not idle.
                    AgentSession.objects.filter(pk=session.pk).update(
                        last_active_at=used, expires_at=min(slid, session.ends_at)
                    )
                    counts["slid"] += 1
                    continue
                session_close(session=session, reason="expired")
                counts["expired"] += 1
    return counts
