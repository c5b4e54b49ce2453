"""Write paths for MCP configurations and stdio templates, and who may see and change what.

Each write records its audit event in the same transaction. Audit details name the fields that
changed, never their values when they are credentials.
"""

import re

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from agentapi import outbound
from agentapi.errors import APIError
from audit.services import audit_record
from mcp import stdio
from mcp.models import AuthType, MCPConfiguration, Status, StdioTemplate, Transport
from tenants.models import MANAGER_ROLES

# Fields whose change alters how the server is reached: pooled sessions and cached catalogues
# are keyed by the revision they bump.
_REACH_FIELDS = {
    "transport",
    "url",
    "stdio_template",
    "stdio_arguments",
    "auth_type",
    "bearer_token",
    "headers",
    "oauth_provider",
}
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}$")
_RESERVED_HEADERS = {
    "host", "content-length", "content-type", "transfer-encoding", "connection", "accept",
    "mcp-session-id", "mcp-protocol-version", "upgrade", "te", "trailer",
}  # fmt: skip


def configurations_visible_to(principal):
    """Shared configurations, and the caller's own."""
    return MCPConfiguration.objects.filter(Q(owner__isnull=True) | Q(owner_id=principal.membership.user_id))


def configuration_writable_by(configuration: MCPConfiguration, principal) -> bool:
    if configuration.owner_id is None:
        return principal.role in MANAGER_ROLES
    return configuration.owner_id == principal.membership.user_id


def _invalid(field: str, message: str, code: str = "invalid") -> APIError:
    return APIError(code, message, status=400, details={field: [message]})


def _check_url(url: str) -> None:
    try:
        outbound.check_url(url)
    except outbound.OutboundURLRefused as exc:
        raise APIError(exc.code, str(exc), status=400, details={"url": [str(exc)]}) from None


def _check_headers(headers) -> dict:
    if not isinstance(headers, dict) or not headers:
        raise _invalid("headers", "An object of header names to values.")
    for name, value in headers.items():
        if not _HEADER_NAME.match(name) or name.lower() in _RESERVED_HEADERS:
            raise _invalid("headers", f"{name!r} cannot be set as a custom header.")
        if not isinstance(value, str) or len(value) > 8192 or any(c in value for c in "\r\n\x00"):
            raise _invalid("headers", f"The value of {name!r} must be a string without line breaks.")
    return dict(headers)


def _validate(configuration: MCPConfiguration, secrets: dict) -> None:
    """Check a configuration as it will be saved; `secrets` holds new bearer_token/headers."""
    if configuration.transport == Transport.STDIO:
        if configuration.stdio_template is None:
            raise _invalid("stdio_template", "A stdio server runs from an operator's template: choose one.")
        if configuration.url:
            raise _invalid("url", "A stdio server has no URL.")
        if stdio.starts_terminal_agent(configuration.stdio_template):
            raise _invalid("stdio_template", "This template starts a terminal agent (an agentapi backend's), "
                           "not an MCP server.")  # fmt: skip
        configuration.stdio_arguments = stdio.validate_arguments(
            configuration.stdio_template, configuration.stdio_arguments or {}
        )
    else:
        if not configuration.url:
            raise _invalid("url", "This transport needs the server's URL.")
        if configuration.stdio_template is not None or configuration.stdio_arguments:
            raise _invalid("stdio_template", "Only stdio servers take a template and arguments.")
        _check_url(configuration.url)
    if configuration.auth_type == AuthType.OAUTH and configuration.transport == Transport.STDIO:
        raise _invalid("auth_type", "A stdio server is not reached over HTTP: it cannot use OAuth.")
    if configuration.auth_type == AuthType.BEARER:
        token = secrets.get("bearer_token")
        if token is not None and (not isinstance(token, str) or not token or any(c in token for c in "\r\n\x00")):
            raise _invalid("bearer_token", "A non-empty token without line breaks.")
        if token is None and not configuration.bearer_token_encrypted:
            raise _invalid("bearer_token", "A bearer token is required for auth_type bearer.")
    if configuration.auth_type == AuthType.HEADERS:
        if "headers" in secrets:
            secrets["headers"] = _check_headers(secrets["headers"])
        elif not configuration.headers_encrypted:
            raise _invalid("headers", "Headers are required for auth_type headers.")
    if configuration.allowed_tools is not None and (
        not isinstance(configuration.allowed_tools, list)
        or not all(isinstance(n, str) for n in configuration.allowed_tools)
    ):
        raise _invalid("allowed_tools", "A list of tool names, or null for all.")


def _store_secrets(configuration: MCPConfiguration, secrets: dict) -> None:
    if configuration.auth_type != AuthType.BEARER:
        configuration.bearer_token_encrypted = ""
    elif "bearer_token" in secrets:
        configuration.set_bearer_token(secrets["bearer_token"])
    if configuration.auth_type != AuthType.HEADERS:
        configuration.headers_encrypted = ""
    elif "headers" in secrets:
        configuration.set_headers(secrets["headers"])


@transaction.atomic
def mcp_configuration_create(*, organization, principal, shared: bool, bearer_token=None, headers=None, **fields):
    if shared and principal.role not in MANAGER_ROLES:
        raise APIError(
            "permission_denied", "Only owners and admins add servers shared with the organization.", status=403
        )
    owner_id = None if shared else principal.membership.user_id
    configuration = MCPConfiguration(organization=organization, owner_id=owner_id, **fields)
    secrets = {k: v for k, v in {"bearer_token": bearer_token, "headers": headers}.items() if v is not None}
    _validate(configuration, secrets)
    if MCPConfiguration.objects.filter(owner_id=owner_id, name=configuration.name).exists():
        raise APIError("conflict", f"A server named {configuration.name!r} already exists.", status=409)
    _store_secrets(configuration, secrets)
    configuration.save()
    audit_record(
        "mcp.configuration.create",
        target=configuration,
        organization_id=configuration.organization_id,
        details={"name": configuration.name, "transport": configuration.transport, "shared": shared},
    )
    return configuration


@transaction.atomic
def mcp_configuration_update(*, configuration: MCPConfiguration, principal, **changes):
    if not configuration_writable_by(configuration, principal):
        raise APIError("permission_denied", "Only owners and admins change shared servers.", status=403)
    configuration = MCPConfiguration.objects.select_for_update().get(pk=configuration.pk)
    secrets = {k: changes.pop(k) for k in ("bearer_token", "headers") if k in changes}
    changed = {name for name, value in changes.items() if getattr(configuration, name) != value} | set(secrets)
    for name, value in changes.items():
        setattr(configuration, name, value)
    if "transport" in changed and configuration.transport == Transport.STDIO:
        configuration.url = configuration.url if "url" in changes else ""
    _validate(configuration, secrets)
    if (
        "name" in changed
        and MCPConfiguration.objects.filter(owner_id=configuration.owner_id, name=configuration.name)
        .exclude(pk=configuration.pk)
        .exists()
    ):
        raise APIError("conflict", f"A server named {configuration.name!r} already exists.", status=409)
    if not changed:
        return configuration
    return _save(configuration, changed=changed, secrets=secrets, created=False)


@transaction.atomic
def mcp_configuration_delete(*, configuration: MCPConfiguration, principal) -> None:
    if not configuration_writable_by(configuration, principal):
        raise APIError("permission_denied", "Only owners and admins remove shared servers.", status=403)
    audit_record(
        "mcp.configuration.delete",
        target=configuration,
        organization_id=configuration.organization_id,
        details={"name": configuration.name},
    )
    configuration.delete()


@transaction.atomic
def mcp_configuration_save(*, configuration: MCPConfiguration, changed: set, secrets: dict) -> MCPConfiguration:
    """Save a configuration edited elsewhere (the admin's form): the same checks, encryption,
    revision and audit as the API's writes. Raises APIError."""
    _validate(configuration, secrets)
    return _save(configuration, changed=set(changed) | set(secrets), secrets=secrets, created=configuration.pk is None)


def _save(configuration: MCPConfiguration, *, changed: set, secrets: dict, created: bool) -> MCPConfiguration:
    """Seal new credentials, bump the revision when how the server is reached changed, clear a
    health-check disable when re-enabled, save, and audit."""
    _store_secrets(configuration, secrets)
    if not created and changed & _REACH_FIELDS:
        configuration.revision += 1
    if "enabled" in changed and configuration.enabled and configuration.status == Status.DISABLED:
        configuration.status, configuration.consecutive_failures, configuration.last_error = Status.UNKNOWN, 0, ""
    configuration.save()
    if created:
        audit_record(
            "mcp.configuration.create",
            target=configuration,
            organization_id=configuration.organization_id,
            details={
                "name": configuration.name,
                "transport": configuration.transport,
                "shared": configuration.owner_id is None,
            },
        )
    elif changed:
        audit_record(
            "mcp.configuration.update",
            target=configuration,
            organization_id=configuration.organization_id,
            details={"changed": sorted(changed)},
        )
    return configuration


@transaction.atomic
def mcp_configuration_enable(*, configuration: MCPConfiguration) -> MCPConfiguration:
    """Enable a configuration again (after the health check disabled it)."""
    configuration = MCPConfiguration.objects.select_for_update().get(pk=configuration.pk)
    if configuration.enabled:
        return configuration
    configuration.enabled, configuration.consecutive_failures, configuration.last_error = True, 0, ""
    configuration.status = Status.UNKNOWN
    configuration.save(update_fields=["enabled", "consecutive_failures", "last_error", "status", "updated_at"])
    audit_record(
        "mcp.configuration.enable", target=configuration, organization_id=configuration.organization_id, details={}
    )
    return configuration


@transaction.atomic
def mcp_configuration_disable(*, configuration: MCPConfiguration) -> MCPConfiguration:
    """Disable a configuration by hand (an operator's decision): calls to it are refused until it is
    enabled again, and its pooled sessions are replaced (its revision changes)."""
    configuration = MCPConfiguration.objects.select_for_update().get(pk=configuration.pk)
    if not configuration.enabled:
        return configuration
    configuration.enabled, configuration.status = False, Status.DISABLED
    configuration.revision += 1
    configuration.save(update_fields=["enabled", "status", "revision", "updated_at"])
    audit_record(
        "mcp.configuration.disable", target=configuration, organization_id=configuration.organization_id, details={}
    )
    return configuration


@transaction.atomic
def mcp_configuration_record_check(*, configuration: MCPConfiguration, ok: bool, error: str = "") -> MCPConfiguration:
    """Record a health check. After MCP_HEALTH_DISABLE_AFTER failures in a row the configuration is
    disabled (audited) until an admin enables it again."""
    from django.conf import settings

    configuration = MCPConfiguration.objects.select_for_update().get(pk=configuration.pk)
    configuration.last_checked_at = timezone.now()
    if ok:
        configuration.status, configuration.last_error, configuration.consecutive_failures = Status.HEALTHY, "", 0
    else:
        configuration.consecutive_failures += 1
        configuration.last_error = error[:500]
        configuration.status = Status.UNHEALTHY
        if configuration.enabled and configuration.consecutive_failures >= settings.MCP_HEALTH_DISABLE_AFTER:
            configuration.enabled, configuration.status = False, Status.DISABLED
            audit_record(
                "mcp.configuration.disable",
                target=configuration,
                organization_id=configuration.organization_id,
                outcome="failure",
                details={"reason": "health_check_failures", "failures": configuration.consecutive_failures},
            )
    configuration.save(
        update_fields=["last_checked_at", "status", "last_error", "consecutive_failures", "enabled", "updated_at"]
    )
    return configuration


# -- stdio templates (operators) ---------------------------------------------------------------

_TEMPLATE_FIELDS = ("command", "arguments", "allowed_arguments", "allowed_env", "env")


def _check_template(template: StdioTemplate) -> None:
    problems = stdio.template_problems(**{name: getattr(template, name) for name in _TEMPLATE_FIELDS})
    if problems:
        raise APIError("invalid", "The template is not valid.", status=400, details=problems)


@transaction.atomic
def stdio_template_create(**fields) -> StdioTemplate:
    template = StdioTemplate(**fields)
    _check_template(template)
    if StdioTemplate.objects.filter(name=template.name).exists():
        raise APIError("conflict", f"A template named {template.name!r} already exists.", status=409)
    template.save()
    audit_record(
        "mcp.stdio_template.create", target=template, details={"name": template.name, "command": template.command}
    )
    return template


@transaction.atomic
def stdio_template_update(*, template: StdioTemplate, **changes) -> StdioTemplate:
    changed = sorted(name for name, value in changes.items() if getattr(template, name) != value)
    for name, value in changes.items():
        setattr(template, name, value)
    _check_template(template)
    if changed:
        template.save()
        # Configurations that run from it now start a different process: replace their sessions.
        for configuration in _configurations_using(template):
            configuration.revision += 1
            configuration.save(update_fields=["revision", "updated_at"])
        audit_record("mcp.stdio_template.update", target=template, details={"changed": changed})
    return template


@transaction.atomic
def stdio_template_delete(*, template: StdioTemplate) -> None:
    if _configurations_using(template):
        raise APIError("conflict", "Configurations still run from this template.", status=409)
    audit_record("mcp.stdio_template.delete", target=template, details={"name": template.name})
    template.delete()


def _configurations_using(template: StdioTemplate) -> list:
    from tenants import scoping

    with scoping.dangerously_all_organizations(reason="stdio template change reaches every organization using it"):
        return list(MCPConfiguration.objects.filter(stdio_template=template))
