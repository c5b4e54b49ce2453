"""The tool catalogue: cached in the shared cache (Redis in production), pinned in the database.

The cache holds what the server listed, keyed by configuration, revision and credential, for
MCP_CATALOGUE_TTL seconds. Every change that alters how the server is reached bumps the revision,
so the next read misses and fetches; the old entry is unreachable and expires. What the platform
filters (allowed_tools, withheld tools) is applied after the cache, so it takes effect at once.
When Redis is down the catalogue is read from the server every time (counted as "error").

Every listing fetched from the server is compared with the pinned definitions (ToolPin): a tool
seen for the first time is pinned; a tool whose description or schema changed is recorded and
audited, and when the organization's `withhold_changed_tools` setting is on it is withheld (not
listed, not callable) until an admin approves the new definition.
"""

import logging

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from audit.services import audit_record
from mcp import metrics
from mcp.models import MCPConfiguration, PinStatus, ToolPin, tool_definition_hash

log = logging.getLogger(__name__)


def _key(configuration: MCPConfiguration, user_id) -> str:
    from mcp.credentials import target_for

    return key_for(configuration, target_for(configuration, user_id))


def key_for(configuration: MCPConfiguration, target) -> str:
    """The cache key of what `target` (the pool's Target for a caller) was listed."""
    return f"mcp:catalogue:{configuration.pk}:{configuration.revision}:{target.fingerprint}"


def cached_many(keys: list[str]) -> dict:
    """The cached listings among `keys` (one round trip); what is missing is not in the answer."""
    try:
        found = cache.get_many(keys)
    except Exception as exc:  # as _cache_get
        log.warning("catalogue cache unavailable: %s", type(exc).__name__)
        metrics.catalogue.labels("error").inc()
        return {}
    metrics.catalogue.labels("hit").inc(len(found))
    return found


def visible(configuration: MCPConfiguration, listed: list[dict], pending: set[str]) -> list[dict]:
    """What callers may see of a listing: allowed, and not withheld."""
    return [tool for tool in listed if configuration.tool_allowed(tool["name"]) and tool["name"] not in pending]


def _cache_get(key):
    try:
        return cache.get(key)
    except Exception as exc:  # the shared cache is an optimisation: any failure means "not cached"
        log.warning("catalogue cache unavailable: %s", type(exc).__name__)
        metrics.catalogue.labels("error").inc()
        return None


def _cache_set(key, value) -> None:
    try:
        cache.set(key, value, settings.MCP_CATALOGUE_TTL)
    except Exception as exc:  # as above
        log.warning("catalogue cache unavailable: %s", type(exc).__name__)


def tools(configuration: MCPConfiguration, user_id, *, refresh: bool = False) -> list[dict]:
    """The tools callers may see: listed by the server, allowed, and not withheld."""
    from mcp import proxy

    key = _key(configuration, user_id)
    listed = None if refresh else _cache_get(key)
    if listed is None:
        if not refresh:
            metrics.catalogue.labels("miss").inc()
        listed = proxy.fetch_tools(configuration, user_id)
        pin(configuration, listed)
        _cache_set(key, listed)
    else:
        metrics.catalogue.labels("hit").inc()
    pending = set(
        ToolPin.objects.filter(configuration=configuration, status=PinStatus.PENDING).values_list("name", flat=True)
    )
    return visible(configuration, listed, pending)


def withheld(configuration: MCPConfiguration, name: str) -> bool:
    return ToolPin.objects.filter(configuration=configuration, name=name, status=PinStatus.PENDING).exists()


@transaction.atomic
def pin(configuration: MCPConfiguration, listed: list[dict]) -> None:
    """Compare a listing with the pins; record new tools and changed definitions."""
    withhold = bool(configuration_organization_setting(configuration, "withhold_changed_tools"))
    pins = {p.name: p for p in ToolPin.objects.select_for_update().filter(configuration=configuration)}
    for tool in listed:
        digest = tool_definition_hash(tool)
        current = pins.get(tool["name"])
        if current is None:
            ToolPin.objects.create(
                organization_id=configuration.organization_id,
                configuration=configuration,
                name=tool["name"],
                definition_hash=digest,
                definition=tool,
            )
            continue
        if digest in (current.definition_hash, current.pending_hash):
            continue
        previous = current.definition_hash
        current.changed_at = timezone.now()
        if withhold:
            current.status, current.pending_hash, current.pending_definition = PinStatus.PENDING, digest, tool
        else:
            current.definition_hash, current.definition = digest, tool
        current.save()
        audit_record(
            "mcp.tool.change",
            target=configuration,
            organization_id=configuration.organization_id,
            outcome="denied" if withhold else "success",
            details={"tool": tool["name"], "previous_hash": previous, "hash": digest, "withheld": withhold},
        )


def configuration_organization_setting(configuration: MCPConfiguration, name: str):
    return (configuration.organization.settings or {}).get(name)


@transaction.atomic
def approve(configuration: MCPConfiguration, name: str) -> ToolPin:
    """Accept a withheld tool's new definition (owners and admins)."""
    current = ToolPin.objects.select_for_update().get(configuration=configuration, name=name, status=PinStatus.PENDING)
    previous = current.definition_hash
    current.definition_hash, current.definition = current.pending_hash, current.pending_definition
    current.status, current.pending_hash, current.pending_definition = PinStatus.APPROVED, "", None
    current.save()
    audit_record(
        "mcp.tool.approve",
        target=configuration,
        organization_id=configuration.organization_id,
        details={"tool": name, "previous_hash": previous, "hash": current.definition_hash},
    )
    return current
