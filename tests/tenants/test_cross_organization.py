"""Every API endpoint, every method: another organization's object is 404 and never listed.

The routes are read from the URL configuration, so a new endpoint without an entry here fails
test_every_api_route_is_covered: add a factory (an object of the given organization) for a route
that takes an id, a list entry for one that lists, or a reason for one that is neither.
"""

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

from audit.models import AuditEvent
from tenants import scoping
from tenants.models import APIKey, Membership
from tests.conftest import Api, committed, error_of, make_key, make_member, streamed


def a_member(organization):
    return make_member(organization, f"someone@{organization.slug}.test", "member").pk


def an_api_key(organization):
    with scoping.organization_scope(organization):
        membership = Membership.objects.first()
    make_key(membership, "target")
    with scoping.organization_scope(organization):
        return APIKey.objects.get(name="target").pk


def an_audit_event(organization):
    with scoping.organization_scope(organization):
        return AuditEvent.objects.order_by("id").first().pk


def an_mcp_configuration(organization):
    from mcp.models import MCPConfiguration

    # A loopback URL: refused when dialled (outbound rules), so the owner's own calls answer fast.
    with scoping.organization_scope(organization):
        return MCPConfiguration.objects.create(
            organization=organization, name="target", url="http://127.0.0.1:9/mcp"
        ).pk


def an_oauth_provider(organization):
    from oauth.models import OAuthProvider

    with scoping.organization_scope(organization):
        return OAuthProvider.objects.create(
            organization=organization, name="target", kind="oauth2", client_id="c",
            authorization_endpoint="http://127.0.0.1:9/authorize", token_endpoint="http://127.0.0.1:9/token",
        ).pk  # fmt: skip


def an_oauth_token(organization):
    from oauth.models import OAuthProvider, OAuthToken

    provider_id = an_oauth_provider(organization)
    with scoping.organization_scope(organization):
        owner = Membership.objects.filter(role="owner").order_by("id").first()
        token = OAuthToken(
            organization=organization, user_id=owner.user_id, provider=OAuthProvider.objects.get(pk=provider_id)
        )
        token.set_tokens(access_token="access", refresh_token="refresh")
        token.save()
        return token.pk


def a_prompt(organization):
    from sessions_app.models import PromptScope, SystemPrompt

    with scoping.organization_scope(organization):
        return SystemPrompt.objects.create(
            organization=organization, scope=PromptScope.ORGANIZATION, name="target", content="Hello."
        ).pk


def an_agent(organization):
    from sessions_app.models import AgentBackend

    with scoping.organization_scope(organization):
        return AgentBackend.objects.create(
            organization=organization, name="target", kind="openai", base_url="https://llm.example/v1", model="m"
        ).pk


def a_session(organization):
    from datetime import timedelta

    from django.utils import timezone

    from sessions_app.models import AgentSession

    with scoping.organization_scope(organization):
        owner = Membership.objects.filter(role="owner").order_by("id").first()
        now = timezone.now()
        return AgentSession.objects.create(
            organization=organization, user_id=owner.user_id, name="target", last_active_at=now,
            expires_at=now + timedelta(hours=1), ends_at=now + timedelta(days=1),
        ).pk  # fmt: skip


def a_run(organization):
    """A session of the organization's owner with one (ended) run: the route's `pk` and `run_id`."""
    from sessions_app.models import AgentMessage, AgentRun

    session = a_session(organization)
    with scoping.organization_scope(organization):
        run = AgentRun.objects.create(organization=organization, session_id=session, status="completed")
        AgentMessage.objects.create(organization=organization, session_id=session, run=run, seq=0, role="user",
                                    content="hello")  # fmt: skip
    return {"pk": session, "run_id": str(run.pk)}


MCP_CONFIGURATION_ROUTES = [
    "mcp-configuration-detail", "mcp-proxy-test", "mcp-proxy-tools", "mcp-proxy-tools-call", "mcp-proxy-resources",
    "mcp-proxy-resources-read", "mcp-proxy-prompts", "mcp-proxy-prompts-get", "mcp-pins-pins", "mcp-pins-approve",
]  # fmt: skip
SESSION_TOOL_ROUTES = [
    "agent-session-tools-tools", "agent-session-tools-tools-call", "agent-session-tools-resources",
    "agent-session-tools-resources-read", "agent-session-tools-prompts", "agent-session-tools-prompts-get",
]  # fmt: skip
DETAIL_ROUTES = {
    "member-detail": a_member,
    "api-key-detail": an_api_key,
    "audit-event-detail": an_audit_event,
    **dict.fromkeys(MCP_CONFIGURATION_ROUTES, an_mcp_configuration),
    "oauth-provider-detail": an_oauth_provider,
    "oauth-token-detail": an_oauth_token,
    "oauth-token-refresh": an_oauth_token,
    "prompt-detail": a_prompt,
    "prompt-versions": a_prompt,
    "prompt-rollback": a_prompt,
    "agent-session-detail": a_session,
    "agent-detail": an_agent,
    "agent-test": an_agent,
    **dict.fromkeys(SESSION_TOOL_ROUTES, a_session),
    "agent-session-conversation-messages": a_session,
    "agent-session-conversation-runs-list": lambda organization: a_run(organization)["pk"],
    "agent-session-conversation-usage": lambda organization: a_run(organization)["pk"],
    "agent-session-conversation-run-detail": a_run,
    "agent-session-conversation-run-cancel": a_run,
}
LIST_ROUTES = {
    "member-list": "/api/v1/members/",
    "api-key-list": "/api/v1/api-keys/",
    "audit-event-list": "/api/v1/audit/events/",
    "mcp-configuration-list": "/api/v1/mcp/configurations/",
    "oauth-provider-list": "/api/v1/oauth/providers/",
    "oauth-token-list": "/api/v1/oauth/tokens/",
    "prompt-list": "/api/v1/prompts/",
    "agent-session-list": "/api/v1/sessions/",
    "agent-list": "/api/v1/agents/",
}
# Routes without an id: what each answers is the caller's own organization only (tested below).
ORGANIZATION_ROUTES = {
    "me", "audit-verify", "audit-event-export", "oauth-authorize", "prompt-compose",
    "agent-session-conversation-usage-total",
}  # fmt: skip
# Platform operators' routes: global by design, refused to everyone else (tested below).
OPERATOR_ROUTES = {"organization-list", "organization-detail", "mcp-stdio-template-list", "mcp-stdio-template-detail"}


def api_route_names(resolver=None, prefix=""):
    resolver = resolver or get_resolver()
    for entry in resolver.url_patterns:
        route = prefix + str(entry.pattern)
        if isinstance(entry, URLResolver):
            yield from api_route_names(entry, route)
        elif isinstance(entry, URLPattern) and route.startswith("api/v1/"):
            yield entry.name


def test_every_api_route_is_covered():
    covered = set(DETAIL_ROUTES) | set(LIST_ROUTES) | ORGANIZATION_ROUTES | OPERATOR_ROUTES
    missing = sorted(set(api_route_names()) - covered)
    assert missing == [], f"API routes without cross-organization coverage: {missing}"


def detail_path(route: str, target) -> str:
    from django.urls import reverse

    return reverse(route, kwargs=target if isinstance(target, dict) else {"pk": target})


# Served by the data plane, which reads committed rows on its own connections.
DATA_PLANE_ROUTES = {
    "mcp-proxy-tools-call", "mcp-proxy-resources-read", "mcp-proxy-prompts-get",
    "agent-session-tools-tools-call", "agent-session-tools-resources-read", "agent-session-tools-prompts-get",
    "agent-session-conversation-messages",
}  # fmt: skip


@pytest.mark.parametrize(
    "route", [pytest.param(r, marks=committed) if r in DATA_PLANE_ROUTES else r for r in sorted(DETAIL_ROUTES)]
)
@pytest.mark.parametrize("method", ["get", "put", "patch", "delete", "post"])
def test_another_organizations_object_is_404_on_every_method(route, method, alice, alice_api, charlie_api, acme):
    target = DETAIL_ROUTES[route](acme)
    path = detail_path(route, target)
    body = {"role": "admin", "name": "x"} if method in ("put", "patch") else None
    before = alice_api.get(path).json()
    foreign = getattr(charlie_api, method)(path, body)
    assert alice_api.get(path).json() == before  # nothing happened to it
    own = getattr(alice_api, method)(path, body)
    if own.status_code == 405:
        assert foreign.status_code == 405  # the method does not exist here, for anyone
    else:
        assert foreign.status_code == 404, foreign.content
        assert error_of(foreign)["code"] == "not_found"


def test_a_denied_lookup_is_recorded_for_the_operators(alice, charlie_api, acme, globex):
    target = an_api_key(acme)
    charlie_api.get(detail_path("api-key-detail", target))
    with scoping.dangerously_all_organizations(reason="test", record=False):
        event = AuditEvent.objects.get(action="tenants.cross_organization.deny")
    assert event.outcome == "denied" and event.organization_id is None
    assert event.details == {"caller_organization": globex.pk, "target_organization": acme.pk}
    assert event.actor_label == "charlie@globex.test"


def test_a_missing_object_is_the_same_404_as_a_foreign_one(alice, charlie_api, acme):
    foreign = charlie_api.get(detail_path("member-detail", a_member(acme)))
    missing = charlie_api.get(detail_path("member-detail", 987654321))
    assert foreign.status_code == missing.status_code == 404
    assert foreign.json() == missing.json()


@pytest.mark.parametrize("route", sorted(LIST_ROUTES))
def test_lists_never_show_another_organizations_objects(route, alice, alice_api, charlie, charlie_api, acme, globex):
    an_mcp_configuration(acme)
    an_mcp_configuration(globex)
    an_oauth_token(acme)
    an_oauth_token(globex)
    a_prompt(acme)
    a_prompt(globex)
    a_session(acme)
    a_session(globex)
    an_agent(acme)
    an_agent(globex)
    make_key(alice)
    make_member(acme, "zed@acme.test", "admin")
    alice_api.post("/api/v1/api-keys/", {"name": "more"})
    ids_acme = {item["id"] for item in alice_api.get(LIST_ROUTES[route]).json()["results"]}
    ids_globex = {item["id"] for item in charlie_api.get(LIST_ROUTES[route]).json()["results"]}
    assert ids_acme and ids_globex
    assert not ids_acme & ids_globex


def test_naming_another_organizations_member_in_a_body_is_refused(alice, charlie_api, acme):
    foreign_member = a_member(acme)
    response = charlie_api.post("/api/v1/api-keys/", {"name": "sneaky", "member": foreign_member})
    assert response.status_code == 400
    assert "member" in error_of(response)["details"]
    with scoping.dangerously_all_organizations(reason="test", record=False):
        assert not APIKey.objects.filter(name="sneaky").exists()
        assert AuditEvent.objects.filter(action="tenants.cross_organization.deny").count() == 1


def test_me_verify_and_export_answer_for_the_callers_organization_only(alice_api, charlie_api, acme, globex):
    assert alice_api.get("/api/v1/me/").json()["organization"]["slug"] == "acme"
    assert charlie_api.get("/api/v1/me/").json()["organization"]["slug"] == "globex"
    exported = streamed(charlie_api.get("/api/v1/audit/events/export/"))
    assert "globex" in exported and "acme" not in exported
    from audit.sequencer import audit_chain_extend

    audit_chain_extend()
    with scoping.organization_scope(globex):
        own_events = AuditEvent.objects.count()
    assert charlie_api.get("/api/v1/audit/verify/").json()["checked"] == own_events


@pytest.mark.parametrize("method", ["get", "post", "patch"])
def test_operator_routes_are_refused_to_everyone_else(method, alice_api, globex):
    from mcp.models import StdioTemplate

    template = StdioTemplate.objects.create(name="operators-only", command="/bin/true")
    paths = ["/api/v1/organizations/", f"/api/v1/organizations/{globex.pk}/"]
    paths += ["/api/v1/mcp/stdio-templates/", f"/api/v1/mcp/stdio-templates/{template.pk}/"]
    for path in paths:
        response = getattr(alice_api, method)(path, {"name": "taken"} if method != "get" else None)
        assert response.status_code in (403, 405)
        if response.status_code == 403:
            assert error_of(response)["code"] == "permission_denied"
    globex.refresh_from_db()
    template.refresh_from_db()
    assert globex.name == "Globex" and template.command == "/bin/true"


@committed
@pytest.mark.parametrize("method", ["get", "post", "delete"])
def test_another_organizations_session_mcp_endpoint_is_404(method, alice, alice_api, charlie_api, acme):
    """The session MCP endpoint (not a DRF route, so listed here by hand)."""
    path = f"/mcp/sessions/{a_session(acme)}/"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
    foreign = charlie_api.request(method, path, body if method == "post" else None, **headers)
    assert foreign.status_code == 404 and error_of(foreign)["code"] == "not_found"
    own = alice_api.request(method, path, body if method == "post" else None, **headers)
    assert own.status_code == (200 if method == "post" else 405), own.content


@committed
@pytest.mark.parametrize(
    "method, path",
    [("get", "/api/v1/sessions/{}/events/"), ("get", "/agentapi/sessions/{}/status"),
     ("get", "/agentapi/sessions/{}/messages"), ("get", "/agentapi/sessions/{}/events"),
     ("post", "/agentapi/sessions/{}/message")],
)  # fmt: skip
def test_another_organizations_session_stream_and_agentapi_routes_are_404(method, path, alice, charlie_api, acme):
    """The event stream and the coder/agentapi routes (data-plane applications, not DRF routes)."""
    from sessions_app.models import AgentMessage

    target = a_run(acme)
    body = {"content": "let me in", "type": "user"} if method == "post" else None
    foreign = charlie_api.request(method, path.format(target["pk"]), body)
    assert foreign.status_code == 404, foreign.content
    if path.startswith("/agentapi/"):
        assert foreign["content-type"] == "application/problem+json" and foreign.json()["title"] == "not_found"
    else:
        assert error_of(foreign)["code"] == "not_found"
    with scoping.organization_scope(acme):
        assert AgentMessage.objects.filter(session_id=target["pk"]).count() == 1  # nothing was sent


def test_usage_counts_the_callers_organization_only(alice_api, charlie_api, acme, globex):
    from sessions_app.models import AgentRun

    for organization, tokens in ((acme, 100), (globex, 7)):
        target = a_run(organization)
        with scoping.organization_scope(organization):
            AgentRun.objects.filter(pk=target["run_id"]).update(input_tokens=tokens, output_tokens=tokens)
    assert charlie_api.get("/api/v1/sessions/usage/").json()["input_tokens"] == 7
    assert alice_api.get("/api/v1/sessions/usage/").json()["input_tokens"] == 100


@committed
@pytest.mark.parametrize("data_plane", [True, False])
def test_a_terminal_agents_token_opens_its_own_session_only(data_plane, alice, charlie, acme, globex, settings):
    """The second session token (a terminal agent's, sessions_app.terminals) on both planes: its
    session's endpoint answers; another organization's session is refused; and row-level security
    shows the token's hash its own session's row and nothing else."""
    from agentapi.db.scope import DatabaseScope, use_scope
    from sessions_app.models import AgentSession
    from sessions_app.services import hash_session_token

    settings.DATA_PLANE_ENABLED = data_plane
    own, foreign = a_session(acme), a_session(globex)
    token = "ast_terminal-agent-token-for-the-cross-org-test"
    with scoping.organization_scope(acme):
        AgentSession.objects.filter(pk=own).update(agent_token_hash=hash_session_token(token))
    agent = Api(token)
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
    assert agent.post(f"/mcp/sessions/{own}/", body, **headers).status_code == 200
    refused = agent.post(f"/mcp/sessions/{foreign}/", body, **headers)
    assert refused.status_code in (401, 404), refused.content
    # The token is for the MCP endpoint only: the management API does not take it.
    assert agent.get("/api/v1/sessions/").status_code == 401
    with use_scope(DatabaseScope(secret_hash=hash_session_token(token))):
        assert list(AgentSession._base_manager.values_list("pk", flat=True)) == [own]
