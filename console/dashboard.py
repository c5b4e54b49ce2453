"""The console's dashboard: what an operator sees at a glance, each figure linked to the list behind it.

Scoped like every admin page: the rows come through the scope tenants.middleware set for the
request (operators: every organization, narrowed by `?organization=`; staff: their organizations,
with row-level security behind the managers). A fixed number of queries whatever the number of
servers or sessions (a test counts them), each on an index (tests/benchmarks/bench_console.py times
the page with 100,000 audit events and 1,000 sessions).
"""

from dataclasses import dataclass, field
from datetime import timedelta
from urllib.parse import urlencode

from django.conf import settings
from django.db.models import Count, Q
from django.urls import reverse
from django.utils import timezone

HOURS = 24
TOP_SERVERS = 12  # servers charted one by one; the rest are added up in the totals


def changelist(model: str, **filters) -> str:
    """The admin list of `model` ("app_label.modelname"), filtered."""
    app_label, model_name = model.split(".")
    url = reverse(f"admin:{app_label}_{model_name}_changelist")
    return f"{url}?{urlencode(filters)}" if filters else url


@dataclass
class Figure:
    label: str
    value: object
    link: str = ""
    tone: str = ""  # "good", "bad" or "" (a count that is not good or bad in itself)
    note: str = ""


@dataclass
class Server:
    id: int
    name: str
    organization: str
    calls: int = 0
    errors: int = 0
    bars: list = field(default_factory=list)  # one per hour, oldest first: (x, calls y, h, errors y, h)
    link: str = ""


def _chosen_organization(request, organizations) -> int | None:
    try:
        chosen = int(request.GET.get("organization", ""))
    except ValueError:
        return None
    return chosen if any(org.pk == chosen for org in organizations) else None


def figures(request) -> dict:
    from mcp.models import MCPConfiguration
    from oauth.models import OAuthToken, TokenStatus
    from sessions_app.models import AgentRun, AgentSession, RunStatus, SessionStatus
    from tenants import scoping
    from tenants.admin import visible_organizations

    operator = request.user.is_superuser
    if not operator and not scoping.current().organization_ids:
        return {}  # staff who manage no organization: nothing of anyone's to show
    organizations = list(visible_organizations(request).only("id", "slug", "name"))
    chosen = _chosen_organization(request, organizations)

    def scoped(queryset):
        return queryset.filter(organization_id=chosen) if chosen else queryset

    def link(model, **filters):
        return changelist(model, **({"organization__id__exact": chosen} if chosen else {}), **filters)

    now = timezone.now()
    servers = scoped(MCPConfiguration.objects.all()).aggregate(
        healthy=Count("id", filter=Q(enabled=True, status="healthy")),
        failing=Count("id", filter=Q(enabled=True, status="unhealthy")),
        disabled=Count("id", filter=Q(enabled=False) | Q(status="disabled")),
        unknown=Count("id", filter=Q(enabled=True, status="unknown")),
    )
    configurations = list(scoped(MCPConfiguration.objects.all()).values_list("id", "name", "organization__slug")[:500])
    open_breakers = _open_breakers(configurations)
    result = {
        "organizations": organizations if operator or len(organizations) > 1 else [],
        "chosen": chosen,
        "operator": operator,
        "servers": [
            Figure(
                "Healthy",
                servers["healthy"],
                link("mcp.mcpconfiguration", enabled__exact=1, status__exact="healthy"),
                "good",
            ),
            Figure(
                "Failing",
                servers["failing"],
                link("mcp.mcpconfiguration", enabled__exact=1, status__exact="unhealthy"),
                "bad" if servers["failing"] else "",
            ),
            Figure("Disabled", servers["disabled"], link("mcp.mcpconfiguration", enabled__exact=0)),
            Figure("Not checked yet", servers["unknown"], link("mcp.mcpconfiguration", status__exact="unknown")),
            Figure(
                "Circuit breaker open",
                len(open_breakers),
                link("mcp.mcpconfiguration", **{"id__in": ",".join(str(pk) for pk, _ in open_breakers)})
                if open_breakers
                else "",
                "bad" if open_breakers else "good",
                ", ".join(name for _, name in open_breakers[:5]),
            ),
        ],  # fmt: skip
    }
    result["calls"], result["calls_total"], result["errors_total"] = _tool_calls(scoped, configurations, now)
    running = scoped(AgentRun.objects.filter(status=RunStatus.RUNNING)).count()
    active = scoped(AgentSession.objects.filter(status=SessionStatus.ACTIVE)).count()
    reauth = scoped(OAuthToken.objects.filter(status=TokenStatus.NEEDS_REAUTH)).count()
    result["activity"] = [
        Figure("Active sessions", active, link("sessions_app.agentsession", status__exact="active")),
        Figure("Agent runs going", running, link("sessions_app.agentrun", status__exact="running")),
        Figure("Connections needing re-authorization", reauth,
               link("oauth.oauthtoken", status__exact="needs_reauth"), "bad" if reauth else "good"),
    ]  # fmt: skip
    result["audit"] = _audit(scoped, link, chosen, organizations, now)
    if operator:
        result["platform"] = _platform()
    return result


def _open_breakers(configurations) -> list[tuple[int, str]]:
    """The configurations whose circuit breaker is open in Redis (mcp.pool's, shared by every
    process), in one round trip; none when Redis is not configured or does not answer."""
    if not settings.REDIS_URL or not configurations:
        return []
    from django.core.cache import cache

    try:
        client = cache.client.get_client(write=False)
        pipe = client.pipeline(transaction=False)
        for pk, _name, _org in configurations:
            pipe.hget(f"breaker:mcp:{pk}", "state")
        states = pipe.execute()
    except Exception:  # Redis down: the readiness panel says so
        return []
    return [
        (pk, name) for (pk, name, _org), state in zip(configurations, states, strict=True) if state in (b"open", "open")
    ]


def _tool_calls(scoped, configurations, now):
    """Tool calls and their failures in the last HOURS hours, per server and hour: the sequencer's
    hourly counts (audit.models.ToolCallHour; an event is counted once chained, within seconds)."""
    from audit.models import ToolCallHour

    start = (now - timedelta(hours=HOURS - 1)).replace(minute=0, second=0, microsecond=0)
    rows = scoped(ToolCallHour.objects.filter(hour__gte=start)).values_list("target_id", "hour", "calls", "errors")
    names = {str(pk): (pk, name, org) for pk, name, org in configurations}
    servers: dict[str, Server] = {}
    hourly: dict[str, dict[int, tuple[int, int]]] = {}
    for key, hour, calls, errors in rows:
        pk, name, org = names.get(key, (None, f"server {key} (removed)", ""))
        server = servers.setdefault(key, Server(id=pk or 0, name=name, organization=org))
        server.calls += calls
        server.errors += errors
        slot = int((hour - start).total_seconds() // 3600)
        previous = hourly.setdefault(key, {}).get(slot, (0, 0))
        hourly[key][slot] = (previous[0] + calls, previous[1] + errors)
    ranked = sorted(servers.items(), key=lambda item: -item[1].calls)
    for key, server in ranked[:TOP_SERVERS]:
        peak = max((calls for calls, _ in hourly[key].values()), default=0) or 1
        server.bars = []
        for i in range(HOURS):
            calls, errors = hourly[key].get(i, (0, 0))
            high, low = round(28 * calls / peak, 1), round(28 * errors / peak, 1)
            server.bars.append((i * 8, round(30 - high, 1), high, round(30 - low, 1), low))  # x, y, h; y, h
        server.link = changelist("audit.auditevent", action="mcp.tool.call", target_id=key)
    return ([server for _, server in ranked[:TOP_SERVERS]], sum(s.calls for s in servers.values()),
            sum(s.errors for s in servers.values()))  # fmt: skip


WAITING_CAP = 10_000  # counted exactly up to this many; "10000+" beyond (a sequencer that stopped)


def _waiting(chosen, now) -> tuple[str, float | None]:
    """Events not chained yet, and the oldest one's age: both on the sequencer's partial index, the
    count capped so that a backlog does not make the page slow."""
    from audit.models import AuditEvent

    events = AuditEvent.objects.filter(hash__isnull=True)
    if chosen:
        events = events.filter(organization_id=chosen)
    count = events.order_by().values("id")[: WAITING_CAP + 1].count()
    oldest = events.order_by("id").values_list("occurred_at", flat=True).first()
    age = (now - oldest).total_seconds() if oldest else None
    return (f"{WAITING_CAP}+" if count > WAITING_CAP else str(count)), age


def _audit(scoped, link, chosen, organizations, now) -> list[Figure]:
    from audit.models import AuditEvent

    waiting, age = _waiting(chosen, now)
    last = scoped(AuditEvent.objects.filter(action="audit.chain.verify")).order_by("-id").first()
    verified = "never" if last is None else f"{timezone.localtime(last.occurred_at):%Y-%m-%d %H:%M} ({last.outcome})"
    return [
        Figure("Events waiting to be chained", waiting, link("audit.auditevent", chained="no"),
               "bad" if age and age > 60 else "", f"oldest {age:.0f} s" if age is not None else ""),
        Figure("Last verification", verified, link("audit.auditevent", action="audit.chain.verify"),
               "bad" if last is not None and last.outcome != "success" else ""),
    ]  # fmt: skip


def _platform() -> dict:
    """Operators only: readiness, rate-limit refusals since the processes started, and what the
    rotation of the encryption keys has left to do."""
    from agentapi import health
    from tenants import rotation

    ready = health.readiness()
    left = rotation.remaining()
    return {
        "readiness": ready,
        "refusals": _refusals(),
        "rotation": Figure("Left under a retired key", f"{left.data_keys} data keys, {left.values} values",
                           "", "bad" if left.data_keys or left.values else "good",
                           "python manage.py rotate_encryption_keys finishes it"),
    }  # fmt: skip


def _refusals() -> list[Figure]:
    """agentapi_rate_limited_total by class, added up across the web processes."""
    import os

    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    totals: dict[str, float] = {}
    for metric in registry.collect():
        if metric.name != "agentapi_rate_limited":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                klass = sample.labels.get("class", "?")
                totals[klass] = totals.get(klass, 0) + sample.value
    return [Figure(klass, int(count), "/metrics") for klass, count in sorted(totals.items())]
