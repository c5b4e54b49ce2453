"""Tool calls, resource reads and prompt gets on the data plane (agentapi.dataplane).

Each handler is the same pipeline of named async steps, and each step is the management plane's
own rule, called rather than copied:

    authenticate  tenants.authentication.bearer_authenticate_async (API key: one round trip), or
                  the access cache below while nothing it read has changed (no round trip)
    scope         tenants.scoping.organization_scope (the same context the ORM and RLS read)
    find          the configuration, visible to the caller, and whether the tool is withheld:
                  one statement, in authentication's own round trip (agentapi.db.aio); another
                  organization's id is 404
    plan          mcp.proxy: enabled, allowed, withheld; what to send and how to shape the answer
    reach         mcp.credentials.target_for, kept per configuration revision for
                  DATA_KEY_CACHE_SECONDS (built on a worker thread when it must read the database)
    call          mcp.pool.acall: breaker, concurrency limit, deadline, pooled session, awaited
                  on this loop
    record        audit.services.audit_record_async: one INSERT, no lock; metrics

Security events (a refused credential, a lookup into another organization) are written after the
answer is decided, as on the management plane.
"""

import copy
import time
from dataclasses import dataclass
from functools import cache

from django.conf import settings
from django.utils import timezone
from rest_framework import exceptions

from agentapi import context as request_context
from agentapi.db import aio
from agentapi.errors import APIError
from agentapi.workers import in_worker
from audit.recorders import deferred_security_events_async
from audit.services import audit_record_async
from mcp import pool, proxy
from mcp.api import serializers as s
from mcp.credentials import target_for
from mcp.models import AuthType, MCPConfiguration, PinStatus, ToolPin, Transport
from oauth import services as oauth_services
from tenants import ratelimits, scoping, security
from tenants.authentication import (
    QUERY_CREDENTIAL_NAMES,
    Principal,
    bearer_authenticate_async,
    touch_api_key_async,
)

# -- find -------------------------------------------------------------------------------------


@cache
def _attnames() -> list[str]:
    return [field.attname for field in MCPConfiguration._meta.concrete_fields]


@cache
def _find_statement() -> aio.Statement:
    return aio.Statement("agentapi_mcp_configuration", _find_sql())


def _find_sql() -> str:
    """The configuration by id, in the organization in scope, shared or the scope's user's own (as
    mcp.services.configurations_visible_to), and whether the named tool waits for approval."""
    columns = ", ".join(f'c."{MCPConfiguration._meta.get_field(name).column}"' for name in _attnames())
    in_scope = "NULLIF(current_setting('app.{}', true), '')::bigint"
    return (
        f'SELECT {columns}, EXISTS (SELECT 1 FROM "{ToolPin._meta.db_table}" p '  # noqa: S608
        "WHERE p.configuration_id = c.id AND p.name = %s AND p.status = %s) "
        f'FROM "{MCPConfiguration._meta.db_table}" c '
        f"WHERE c.id = %s AND c.organization_id = {in_scope.format('organization_ids')} "
        f"AND (c.owner_id IS NULL OR c.owner_id = {in_scope.format('user_id')})"
    )


# What authenticate_and_find read (the API key with its member, user and organization; the
# configuration; whether the tool waits for approval), kept per credential, configuration and tool
# and used again while agentapi.db.aio.Changes says nothing it was read from has changed since: a
# revoked key, a deactivated member or organization, an edited or disabled configuration, a pin
# set to pending are announced by PostgreSQL's triggers at their commit, and forgotten then, not
# after a time to live. What it saves is the tool call's one database round trip before the
# upstream is called. API keys only (a JWT's signature, expiry and signing keys are checked every
# time, on a worker thread); a refused credential or an id not found is never kept, so each is
# read, and recorded, every time. An entry lives DATA_PLANE_ACCESS_CACHE_SECONDS at most.
@dataclass
class _Access:
    mark: int
    kept_at: float
    principal: Principal
    configuration: MCPConfiguration
    withheld: bool


_access: dict[tuple[str, int, str], _Access] = {}
MAX_ACCESS_ENTRIES = 10_000


def _kept_access(key: tuple, request) -> _Access | None:
    if any(name in request.query for name in QUERY_CREDENTIAL_NAMES):
        return None  # refused, as authentication refuses it
    entry = _access.get(key)
    if entry is None:
        return None
    if (
        time.monotonic() - entry.kept_at < settings.DATA_PLANE_ACCESS_CACHE_SECONDS
        and aio.changes().unchanged_since(entry.mark, entry.principal.organization.pk)
        and not entry.principal.api_key.is_expired()
    ):
        return entry
    _access.pop(key, None)
    return None


def _keep_access(key: tuple, mark: int | None, principal, configuration, withheld) -> None:
    if mark is None or principal.api_key is None or settings.DATA_PLANE_ACCESS_CACHE_SECONDS <= 0:
        return
    if len(_access) >= MAX_ACCESS_ENTRIES:
        _access.clear()
    _access[key] = _Access(mark, time.monotonic(), principal, copy.copy(configuration), withheld)


async def authenticate_and_find(
    request, pk: str, tool: str, credential_hash: str | None = None
) -> tuple[Principal, MCPConfiguration, bool]:
    """The caller, the configuration and whether `tool` is withheld: with an API key, one round
    trip, or none while the access cache holds them (credential_hash, the Authorization header's
    hash, names the caller there). Another organization's configuration, or one the caller may not
    see, is NotFound."""
    pk = int(pk)
    key = (credential_hash, pk, tool)
    if credential_hash is not None and (kept := _kept_access(key, request)) is not None:
        await touch_api_key_async(kept.principal, timezone.now())
        return kept.principal, copy.copy(kept.configuration), kept.withheld
    mark = aio.changes().mark() if credential_hash is not None else None
    # Not an id at all when out of range: looked up as 0, found nowhere (as the ORM answers).
    statement = (_find_statement(), [tool, PinStatus.PENDING, pk if 0 < pk < 2**63 else 0])
    principal, (rows,) = await bearer_authenticate_async(
        request.headers.get("authorization", ""), request.query, also=[statement]
    )
    if not rows or rows[0][_attnames().index("organization_id")] != principal.organization.pk:
        with scoping.organization_scope(principal.organization, actor=principal.actor):
            security.report("lookup_denied", model=MCPConfiguration._meta.label, pk=pk)
        raise exceptions.NotFound()
    *values, withheld = rows[0]
    configuration = aio.instance(MCPConfiguration, _attnames(), values)
    configuration.organization = principal.organization
    _keep_access(key, mark, principal, configuration, withheld)
    return principal, configuration, withheld


# -- reach ------------------------------------------------------------------------------------

_targets: dict[tuple, tuple[float, pool.Target]] = {}


def _cacheable(configuration: MCPConfiguration) -> bool:
    # A user's OAuth token is refreshed and revoked on its own schedule (oauth.services keeps its
    # own copy for that); a stdio target is cheap and reads its template.
    return configuration.auth_type != AuthType.OAUTH and configuration.transport != Transport.STDIO


async def reach(configuration: MCPConfiguration, user_id: int) -> pool.Target:
    """The pool's Target for this caller. The credential is opened on a worker thread (it may read
    the organization's data key, or the user's connection, from the database) and, for shared
    credentials, kept for DATA_KEY_CACHE_SECONDS per configuration revision: a changed credential
    bumps the revision, and a destroyed data key stops working within that time, as everywhere."""
    key = (configuration.pk, configuration.revision)
    if _cacheable(configuration):
        cached = _targets.get(key)
        if cached is not None and time.monotonic() - cached[0] < settings.DATA_KEY_CACHE_SECONDS:
            return cached[1]
    target = await in_worker(target_for)(configuration, user_id)
    if _cacheable(configuration):
        now = time.monotonic()
        # Nothing outlives its time here: expired targets (and the credentials they carry, and
        # those of older revisions) are dropped whenever a new one is kept.
        for stale in [k for k, (kept, _) in _targets.items() if now - kept >= settings.DATA_KEY_CACHE_SECONDS]:
            del _targets[stale]
        _targets[key] = (now, target)
    return target


# -- call -------------------------------------------------------------------------------------


async def _call(configuration: MCPConfiguration, user_id: int, plan: proxy.CallPlan):
    """proxy._call_with_fresh_credential, awaited: a user's OAuth token the server refused is
    refreshed once and the call made again."""
    try:
        return await pool.acall(await reach(configuration, user_id), plan.operation, reads=plan.reads)
    except pool.UpstreamUnauthorized:
        if configuration.auth_type != AuthType.OAUTH or configuration.oauth_provider_id is None:
            raise
    token = await in_worker(_renew)(configuration, user_id)
    try:
        return await pool.acall(await reach(configuration, user_id), plan.operation, reads=plan.reads)
    except pool.UpstreamUnauthorized:
        raise await in_worker(oauth_services.needs_reauthorization)(
            token, "the server refused the refreshed token"
        ) from None


def _renew(configuration: MCPConfiguration, user_id: int):
    return oauth_services.renew_after_refusal(user_id=user_id, provider=configuration.oauth_provider)


async def _run(configuration: MCPConfiguration, user_id: int, plan: proxy.CallPlan) -> dict:
    started = time.perf_counter()
    error = None
    try:
        result = await _call(configuration, user_id, plan)
        return proxy.checked_size(plan.shape(result))
    except APIError as exc:
        error = exc
        raise
    except pool.UpstreamError as exc:
        error = exc
        raise proxy.upstream_error(exc) from None
    finally:
        event = proxy.outcome_of(configuration, plan.method, started, error, plan.audit_action, plan.audit_details)
        await audit_record_async(event.pop("action"), **event)


# -- the routes -------------------------------------------------------------------------------


def _body(request) -> tuple[object, exceptions.APIException | None]:
    """The parsed body, or the error parsing it: raised only after the configuration is found,
    so that another organization's id is 404 whatever the body holds."""
    try:
        return request.json(), None
    except exceptions.APIException as exc:
        return {}, exc


def _valid(serializer_class, data, error) -> dict:
    if error is not None:
        raise error
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


async def _handle(request, pk: str, serializer_class, perform) -> dict:
    async with deferred_security_events_async():
        data, error = _body(request)
        name = data.get("name") if isinstance(data, dict) and isinstance(data.get("name"), str) else ""
        speculation = ratelimits.speculate("mcp", request.headers.get("authorization", ""))
        try:
            principal, configuration, withheld = await authenticate_and_find(request, pk, name, speculation.key)
        except BaseException:
            speculation.drop()
            raise
        await ratelimits.enforce_async("mcp", principal, speculation)
        with scoping.organization_scope(principal.organization, actor=principal.actor):
            request_context.annotate(user=str(principal.membership.user_id))
            validated = _valid(serializer_class, data, error)
            proxy.require_enabled(configuration)
            return await perform(configuration, principal.membership.user_id, validated, withheld)


async def call_tool(configuration, user_id, validated, withheld, session=None) -> dict:
    """A tool call as `user_id`, refused (and audited) when the tool is not allowed or withheld;
    `session` names the agent session it came through (sessions_app.dataplane)."""
    name = validated["name"]
    refusal = proxy.tool_refusal(configuration, name, withheld=withheld)
    if refusal is not None:
        event = proxy.denial_event(configuration, name, refusal, session)
        await audit_record_async(event.pop("action"), **event)
        raise refusal
    plan = proxy.plan_tool_call(configuration, name, validated["arguments"], session)
    return await _run(configuration, user_id, plan)


async def read_resource(configuration, user_id, validated, withheld=False, session=None) -> dict:
    return await _run(configuration, user_id, proxy.plan_resource_read(configuration, validated["uri"], session))


async def get_prompt(configuration, user_id, validated, withheld=False, session=None) -> dict:
    plan = proxy.plan_prompt_get(configuration, validated["name"], validated["arguments"], session)
    return await _run(configuration, user_id, plan)


async def tool_call(request, pk: str) -> dict:
    """POST /api/v1/mcp/configurations/{id}/tools/call/ (MCPProxyViewSet.tools_call's contract)."""
    return await _handle(request, pk, s.ToolCallSerializer, call_tool)


async def resource_read(request, pk: str) -> dict:
    """POST /api/v1/mcp/configurations/{id}/resources/read/."""
    return await _handle(request, pk, s.ResourceReadSerializer, read_resource)


async def prompt_get(request, pk: str) -> dict:
    """POST /api/v1/mcp/configurations/{id}/prompts/get/."""
    return await _handle(request, pk, s.PromptGetSerializer, get_prompt)
