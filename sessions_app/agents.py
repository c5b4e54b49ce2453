"""Agent backends: what runs a session's agent (DESIGN.md; the agents issue).

An organization's owners and admins manage its backends; operators manage the platform's, which
every organization may use. Members see them (never a key) and choose one when they open a session.
Every URL passes the outbound rules when saved (and again, pinned, when dialled); the API key is
sealed and write-only; every change is audited without the key. Changing how a backend is
reached (its URL, model, key or template) bumps its revision.
"""

from django.db import transaction

from agentapi import outbound
from agentapi.errors import APIError
from audit.services import audit_record
from mcp import stdio
from sessions_app.models import AGENT_SETTINGS_DEFAULTS, AgentBackend, AgentKind
from tenants.authentication import Principal
from tenants.models import MANAGER_ROLES

# What says how a backend is reached: changing one bumps its revision (its clients are rebuilt, a
# terminal agent started from its template is restarted).
REACHED_BY = {"base_url", "model", "api_key", "template", "template_arguments"}

# Inclusive bounds of each setting (None: unset, the backend's own default applies).
_BOUNDS = {
    "temperature": (0.0, 2.0, float),
    "max_output_tokens": (1, 1_000_000, int),
    "max_steps": (1, 200, int),
    "run_timeout_seconds": (1, 86_400, int),
}


def _invalid(field: str, message: str) -> APIError:
    return APIError("invalid", message, status=400, details={field: [message]})


def may_write(principal: Principal, *, platform: bool) -> None:
    allowed = principal.membership.user.is_superuser if platform else principal.role in MANAGER_ROLES
    if not allowed:
        who = "operators" if platform else "owners and admins"
        raise APIError("permission_denied", f"Only {who} may change these agent backends.", status=403)


def check_settings(value) -> dict:
    """The backend's settings, checked: known names, numbers within bounds (booleans are not numbers)."""
    if not isinstance(value, dict):
        raise _invalid("settings", "An object: temperature, max_output_tokens, max_steps, run_timeout_seconds.")
    unknown = sorted(set(value) - set(AGENT_SETTINGS_DEFAULTS))
    if unknown:
        raise _invalid("settings", f"Unknown settings: {', '.join(unknown)}.")
    checked = {}
    for name, setting in value.items():
        low, high, kind = _BOUNDS[name]
        if setting is None:
            continue
        number_ok = isinstance(setting, (int, float)) and not isinstance(setting, bool)
        if not number_ok or (kind is int and float(setting) != int(setting)) or not low <= setting <= high:
            raise _invalid(
                "settings", f"{name} is {'a whole number' if kind is int else 'a number'} from {low} to {high}."
            )
        checked[name] = kind(setting)
    return checked


def _check_url(url: str) -> None:
    try:
        outbound.check_url(url)
    except outbound.OutboundURLRefused as exc:
        raise APIError(exc.code, str(exc), status=400, details={"base_url": [str(exc)]}) from None


def _check_kind_fields(backend: AgentBackend) -> None:
    """What a backend of its kind needs: a model's URL and model; a coder/agentapi server's URL, or
    an operator's template that starts one per session (its arguments checked against it)."""
    if backend.kind != AgentKind.AGENTAPI:
        if not backend.model:
            raise _invalid("model", f"A {backend.kind} backend names its model.")
        if backend.template_id is not None or backend.template_arguments:
            raise _invalid("template", "Only agentapi backends start from a template.")
    elif (backend.template_id is None) == (not backend.base_url):
        raise _invalid("base_url", "An agentapi backend has either the URL of a coder/agentapi server or a template.")
    if backend.template_id is not None:
        if not stdio.starts_terminal_agent(backend.template):
            raise _invalid("template", "This template starts an MCP server: a terminal agent's names {port}.")
        arguments = stdio.validate_arguments(backend.template, backend.template_arguments or {})
        backend.template_arguments = arguments if any(arguments.values()) else {}
    elif backend.template_arguments:
        raise _invalid("template_arguments", "Only a backend with a template takes its arguments.")
    if not backend.base_url and backend.kind != AgentKind.AGENTAPI:
        raise _invalid("base_url", f"A {backend.kind} backend names its server's URL.")
    if backend.base_url:
        _check_url(backend.base_url)


@transaction.atomic
def agent_create(
    *, principal: Principal, platform: bool, name: str, kind: str, base_url: str = "", model: str = "",
    api_key: str = "", settings=None, enabled: bool = True, template=None, template_arguments=None,
) -> AgentBackend:  # fmt: skip
    may_write(principal, platform=platform)
    organization = None if platform else principal.organization
    if AgentBackend.objects.filter(organization=organization, name=name).exists():
        raise APIError("conflict", f"An agent backend named {name!r} already exists.", status=409)
    backend = AgentBackend(
        organization=organization, name=name, kind=kind, base_url=base_url, model=model,
        settings=check_settings({} if settings is None else settings), enabled=enabled, template=template,
        template_arguments=template_arguments or {},
    )  # fmt: skip
    _check_kind_fields(backend)
    backend.set_api_key(api_key)
    backend.save()
    audit_record(
        "agent.create",
        target=backend,
        organization_id=backend.organization_id,
        details={
            "name": name,
            "kind": kind,
            "platform": platform,
            "has_api_key": bool(api_key),
            **({"template": template.name} if template is not None else {}),
        },  # fmt: skip
    )
    return backend


@transaction.atomic
def agent_update(*, principal: Principal, backend: AgentBackend, api_key=None, **changes) -> AgentBackend:
    may_write(principal, platform=backend.organization_id is None)
    if "settings" in changes:
        changes["settings"] = check_settings(changes["settings"])
    changed = sorted(name for name, value in changes.items() if getattr(backend, name) != value)
    for name, value in changes.items():
        setattr(backend, name, value)
    _check_kind_fields(backend)
    if api_key is not None:
        backend.set_api_key(api_key)
        changed.append("api_key")
    if changed:
        if REACHED_BY & set(changed):
            backend.revision += 1
        backend.save()
        audit_record(
            "agent.update",
            target=backend,
            organization_id=backend.organization_id,
            details={"changed": sorted(changed)},
        )
    return backend


@transaction.atomic
def agent_save(*, backend: AgentBackend, changed: set[str], api_key: str | None, created: bool) -> AgentBackend:
    """The admin's save (its form checked the URL, settings and who may write): the key sealed, the
    revision bumped when how the backend is reached changed, audited without the key."""
    if backend.settings:
        backend.settings = check_settings(backend.settings)
    if not created and REACHED_BY & changed or (not created and api_key):
        backend.revision += 1
    if created:
        backend.save()  # its uuid (the key's sealing context) is fixed first
    if api_key:
        backend.set_api_key(api_key)
    backend.save()
    if created:
        details = {"name": backend.name, "kind": backend.kind, "platform": backend.organization_id is None,
                   "has_api_key": bool(api_key)}  # fmt: skip
    else:
        details = {"changed": sorted(changed | ({"api_key"} if api_key else set()))}
    audit_record(
        "agent.create" if created else "agent.update",
        target=backend,
        organization_id=backend.organization_id,
        details=details,
    )
    return backend


@transaction.atomic
def agent_delete(*, principal: Principal, backend: AgentBackend) -> None:
    may_write(principal, platform=backend.organization_id is None)
    audit_record(
        "agent.delete", target=backend, organization_id=backend.organization_id, details={"name": backend.name}
    )
    backend.delete()


def usable(principal: Principal, pk) -> AgentBackend:
    """The backend a member names for a session: the organization's or the platform's, enabled."""
    backend = AgentBackend.objects.filter(pk=pk, enabled=True).first() if isinstance(pk, int) else None
    if backend is None:
        raise _invalid("agent", "No such agent backend, or it is disabled.")
    return backend


def agent_test(*, principal: Principal, backend: AgentBackend) -> dict:
    """Send the backend one tiny request (sessions_app.agent_loop.probe), as an owner or admin
    (operators for the platform's); audited, never the reply."""
    may_write(principal, platform=backend.organization_id is None)
    return probe_and_record(backend, organization_id=principal.organization.pk)


def probe_and_record(backend: AgentBackend, *, organization_id: int | None) -> dict:
    """The probe, and its audit event (in `organization_id`: the caller's, or the backend's own)."""
    import asyncio

    from sessions_app import agent_loop

    result = asyncio.run(agent_loop.probe(backend))
    audit_record(
        "agent.test",
        target=backend,
        organization_id=organization_id,
        outcome="success" if result["ok"] else "failure",
        details={
            "latency_ms": result["latency_ms"],
            **({"error": result["error"]["code"]} if not result["ok"] else {}),
        },
    )
    return result
