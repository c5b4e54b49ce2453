# ruff: noqa: F811 (pytest fixtures imported from tests.mcp.conftest, named as parameters)
"""Rate limits (agentapi.ratelimit, tenants.ratelimits) on real Redis and PostgreSQL: GCRA in one
Lua script on Redis's clock, per credential and per organization, 429 `rate_limited` naming the
limit with Retry-After and the IETF RateLimit fields, an organization's own rates, the data plane's
tool calls, the fail modes when Redis is unreachable, and one limit shared by two web processes."""

import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import redis
from django.conf import settings as django_settings
from django.utils import timezone

from agentapi import ratelimit
from tenants import scoping
from tenants.models import Organization
from tests.conftest import committed, error_of
from tests.mcp.conftest import http_server, mcp_settings  # noqa: F401 (fixtures)

ME = "/api/v1/me/"


def _forget_counters():
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    for key in client.scan_iter("agentapi:rl:*"):
        client.delete(key)
    ratelimit._local.tats.clear()


@pytest.fixture(autouse=True)
def clean_counters():
    _forget_counters()
    ratelimit._sync.down_until = 0.0
    yield
    ratelimit._sync.client, ratelimit._sync.down_until = None, 0.0  # nothing of a dead Redis outlives the test
    # Nor any counter: an address these tests made fail (at rates of a few an hour) would be refused
    # in every later test from it.
    _forget_counters()


@pytest.fixture
def limits(settings):
    def set_limits(**classes):
        settings.RATE_LIMITS = {**django_settings.RATE_LIMITS, **classes}

    return set_limits


def test_the_local_fallback_carries_what_was_spent_across_a_rate_change(settings):
    settings.RATE_LIMIT_EXPECTED_PROCESSES = 1
    local = ratelimit._Local()
    two, five = (ratelimit.Limit("read", "credential", "key:1", count, 3600) for count in (2, 5))
    assert [local.decide([two]).refused_by is None for _ in range(3)] == [True, True, False]
    assert [local.decide([five]).refused_by is None for _ in range(4)] == [True, True, True, False]
    assert local.decide([two]).refused_by == two  # lowered again: five spent, refused at once


def test_gcra_admits_the_burst_then_refuses_and_a_refusal_spends_nothing_of_the_other_limits(settings):
    tight = ratelimit.Limit("read", "credential", "k1", 3, 3600)
    loose = ratelimit.Limit("read", "organization", "o1", 10, 3600)
    remaining = []
    for _ in range(3):
        decision = ratelimit.check([tight, loose])
        remaining.append(decision.remaining)
    assert remaining == [[2, 9], [1, 8], [0, 7]]
    with pytest.raises(ratelimit.RateLimited) as refused:
        ratelimit.check([tight, loose])
    assert refused.value.decision.refused_by == tight and 1190 < refused.value.wait <= 1201  # one every 20 minutes
    # The refusal spent nothing: the organization's limit still has 7 left.
    assert ratelimit.check([loose]).remaining == [6]
    headers = ratelimit.headers(ratelimit.check([loose]))
    assert headers["RateLimit-Policy"] == '"read-organization";q=10;w=3600'
    assert headers["RateLimit"] == '"read-organization";r=5;t=1800'  # 5 of 10 spent: whole in 30 minutes


def test_the_management_api_answers_429_naming_the_limit_with_its_fields(alice_api, limits):
    limits(read={"credential": "3/hour", "organization": "100/hour"})
    answers = [alice_api.get(ME) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[0]["RateLimit-Policy"] == '"read-credential";q=3;w=3600, "read-organization";q=100;w=3600'
    assert answers[0]["RateLimit"].startswith('"read-credential";r=2;t=')
    refused = answers[3]
    assert error_of(refused)["code"] == "rate_limited" and "3/hour" in error_of(refused)["message"]
    assert error_of(refused)["details"] == {"limit": "read-credential", "rate": "3/hour"}
    assert int(refused["Retry-After"]) > 1000 and refused["RateLimit"].startswith('"read-credential";r=0;')
    # Writes are another class: not spent by reads.
    assert alice_api.post("/api/v1/api-keys/", {"name": "another"}).status_code == 201


def test_an_organizations_own_rates_apply_and_are_checked(alice_api, bob_api, acme, operator_api):
    changed = operator_api.patch(f"/api/v1/organizations/{acme.pk}/",
                                 {"settings": {"rate_limits": {"read": {"organization": "3/hour"}}}})  # fmt: skip
    assert changed.status_code == 200, changed.content
    # Two members, one organization: its limit is shared.
    answers = [alice_api.get(ME).status_code, bob_api.get(ME).status_code, alice_api.get(ME).status_code,
               bob_api.get(ME).status_code]  # fmt: skip
    assert answers == [200, 200, 200, 429]
    for bad in ({"read": {"credential": "many"}}, {"reads": {}}, {"read": {"galaxy": "1/hour"}}, ["1/hour"],
                {"read": {"credential": "0/hour"}}, {"read": {"credential": "5/fortnight"}}):  # fmt: skip
        refused = operator_api.patch(f"/api/v1/organizations/{acme.pk}/", {"settings": {"rate_limits": bad}})
        assert refused.status_code == 400, (bad, refused.content)
    acme.refresh_from_db()
    assert acme.settings["rate_limits"] == {"read": {"organization": "3/hour"}}


def test_a_raised_limit_admits_at_once_what_it_now_allows(alice_api, acme, operator_api):
    path = f"/api/v1/organizations/{acme.pk}/"
    assert (
        operator_api.patch(path, {"settings": {"rate_limits": {"read": {"credential": "2/hour"}}}}).status_code == 200
    )
    assert [alice_api.get(ME).status_code for _ in range(3)] == [200, 200, 429]
    assert (
        operator_api.patch(path, {"settings": {"rate_limits": {"read": {"credential": "5/hour"}}}}).status_code == 200
    )
    # What was spent carries over as requests: two of the five, three left at once (not after the
    # old rate's state has aged out); a lowered rate refuses at once (the test below).
    answers = [alice_api.get(ME) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[0]["RateLimit-Policy"].startswith('"read-credential";q=5;w=3600')


@committed
def test_data_plane_tool_calls_are_limited_as_mcp_requests(alice_api, http_server, limits, mcp_settings):
    from tests.mcp.conftest import configure

    configuration = configure(alice_api, url=http_server.url)
    limits(mcp={"credential": "2/hour"})
    path = f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/"
    before = http_server.stats().get("tools/call", 0)
    answers = [alice_api.post(path, {"name": "echo", "arguments": {"text": "x"}}) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[0]["RateLimit-Policy"] == '"mcp-credential";q=2;w=3600'
    assert error_of(answers[2])["details"]["limit"] == "mcp-credential" and answers[2]["Retry-After"]
    assert http_server.stats().get("tools/call", 0) - before == 2  # the refused call never reached the server


@committed
def test_the_data_planes_early_limit_check_never_outranks_authentication_or_new_rates(
    alice, alice_api, acme, http_server, limits, mcp_settings, operator_api
):
    """The data plane starts a known credential's Redis round trip while its database round trip
    authenticates it (tenants.ratelimits.speculate): a revoked key is still 401, and rates changed
    meanwhile are the ones applied."""
    from tenants.models import APIKey
    from tests.mcp.conftest import configure

    configuration = configure(alice_api, url=http_server.url)
    path = f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/"
    body = {"name": "echo", "arguments": {"text": "x"}}
    limits(mcp={"credential": "5/hour"})
    assert [alice_api.post(path, body).status_code for _ in range(2)] == [200, 200]
    changed = operator_api.patch(f"/api/v1/organizations/{acme.pk}/",
                                 {"settings": {"rate_limits": {"mcp": {"credential": "2/hour"}}}})  # fmt: skip
    assert changed.status_code == 200
    refused = alice_api.post(path, body)
    assert refused.status_code == 429 and refused["RateLimit-Policy"].startswith('"mcp-credential";q=2;w=3600')
    token = alice_api.headers["Authorization"].removeprefix("Bearer ")
    with scoping.organization_scope(acme):
        assert APIKey.objects.filter(prefix=token[:16]).update(revoked_at=timezone.now()) == 1
    assert alice_api.post(path, body).status_code == 401


@committed
def test_a_message_over_the_agent_limit_is_refused_and_not_stored(alice_api, acme, limits, mcp_settings):
    from sessions_app.models import AgentMessage

    backend = alice_api.post("/api/v1/agents/", {"name": "limited", "kind": "openai", "model": "m",
                                                 "base_url": "http://127.0.0.1:9/v1"}).json()  # fmt: skip
    session = alice_api.post("/api/v1/sessions/", {"agent": backend["id"]}).json()
    limits(agent={"credential": "1/hour"})
    path = f"/api/v1/sessions/{session['id']}/messages/"
    first, second = alice_api.post(path, {"content": "one"}), alice_api.post(path, {"content": "two"})
    assert (first.status_code, second.status_code) == (202, 429), second.content
    assert first["RateLimit-Policy"].startswith('"agent-credential";q=1;w=3600')
    assert error_of(second)["details"]["limit"] == "agent-credential"
    with scoping.organization_scope(acme):
        assert list(AgentMessage.objects.values_list("content", flat=True)) == ["one"]


@committed
def test_the_session_mcp_endpoints_tool_calls_count_as_mcp_requests(alice_api, http_server, limits, mcp_settings):
    import json

    from tests.mcp.conftest import configure

    configuration = configure(alice_api, name="tests", url=http_server.url)
    session = alice_api.post("/api/v1/sessions/", {"mcp_configurations": [configuration["id"]]}).json()
    limits(mcp={"credential": "1/hour"})
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-06-18"}
    results = []
    for i in range(2):
        body = {"jsonrpc": "2.0", "id": i, "method": "tools/call",
                "params": {"name": "tests__echo", "arguments": {"text": "hi"}}}  # fmt: skip
        answer = alice_api.post(f"/mcp/sessions/{session['id']}/", body, **headers)
        assert answer.status_code == 200, answer.content
        text = answer.content.decode()
        results.append(json.loads(text[text.index("{") :].split("\n")[0])["result"])
    assert results[0]["isError"] is False and results[0]["content"][0]["text"] == "hi"
    assert results[1]["isError"] is True and results[1]["content"][0]["text"].startswith("rate_limited: ")


def test_the_oauth_callback_is_limited_per_address(client, limits, db):
    limits(auth={"address": "2/hour"})
    answers = [client.get("/oauth/callback/", {"state": "forged", "code": "x"}) for _ in range(3)]
    assert [a.status_code for a in answers] == [400, 400, 429]
    assert answers[2]["Retry-After"] and answers[2]["RateLimit-Policy"] == '"auth-address";q=2;w=3600'
    assert "Rate limit exceeded" in answers[2].content.decode()


@pytest.mark.parametrize("mode, expected", [("local", [200, 200, 429]), ("open", [200, 200, 200, 200]),
                                            ("closed", [503])])  # fmt: skip
def test_with_redis_unreachable_the_fail_mode_decides(alice_api, limits, settings, mode, expected):
    limits(read={"credential": "4/hour"})
    settings.REDIS_URL = "redis://127.0.0.1:9/0"  # nothing listens there
    settings.RATE_LIMIT_FAIL_MODE = mode
    settings.RATE_LIMIT_EXPECTED_PROCESSES = 2  # local: each process at half the limit
    ratelimit._sync.client = None
    try:
        answers = [alice_api.get(ME) for _ in expected]
    finally:
        ratelimit._sync.client = None
    assert [a.status_code for a in answers] == expected
    if mode == "local":  # the fields say what this process enforces: its share
        assert answers[0]["RateLimit-Policy"].startswith('"read-credential";q=2;w=3600')
    if mode == "closed":
        assert error_of(answers[0])["code"] == "rate_limits_unavailable" and answers[0]["Retry-After"]


def test_auth_limits_never_fail_open(settings):
    settings.REDIS_URL = "redis://127.0.0.1:9/0"
    settings.RATE_LIMIT_FAIL_MODE = "open"
    settings.RATE_LIMIT_EXPECTED_PROCESSES = 1
    ratelimit._sync.client = None
    try:
        limit = ratelimit.Limit("auth", "address", "192.0.2.1", 2, 60)
        ratelimit.check([limit])
        ratelimit.check([limit])
        with pytest.raises(ratelimit.RateLimited):
            ratelimit.check([limit])
    finally:
        ratelimit._sync.client = None


@committed
def test_two_web_processes_share_one_limit_within_one_percent(alice_api, acme):
    from tests.sessions.test_mcp_endpoint import start_web

    with scoping.dangerously_all_organizations(reason="test", record=False):
        Organization.objects.filter(pk=acme.pk).update(
            settings={"rate_limits": {"read": {"credential": "300/hour", "organization": "100000/hour"}}}
        )
    started = [start_web(), start_web()]
    try:
        bases = [base for _, base in started]
        auth = {"Authorization": alice_api.headers["Authorization"]}
        statuses: list[int] = []
        lock = threading.Lock()

        def burst(base: str) -> None:
            with httpx.Client(base_url=base, headers=auth, timeout=30) as client:
                for _ in range(150):
                    code = client.get(ME).status_code
                    with lock:
                        statuses.append(code)

        with ThreadPoolExecutor(6) as pool:  # three times the limit, as fast as both processes answer
            list(pool.map(burst, bases * 3))
    finally:
        for process, _ in started:
            process.kill()
            process.wait(10)
    admitted = statuses.count(200)
    assert len(statuses) == 900 and set(statuses) <= {200, 429}, sorted(set(statuses))
    assert 297 <= admitted <= 303, admitted  # within 1% of 300 (and of the second or two it took)


# -- failed authentications per address -------------------------------------------------------------

BAD_KEY = "aak_" + "0" * 40


def test_an_address_that_fails_too_often_is_refused_whatever_it_presents(alice_api, settings):
    from tests.conftest import Api

    settings.RATE_LIMIT_AUTH_FAILURES = "3/hour"
    # No credential at all is not a failed authentication: never counted.
    assert {Api().get(ME).status_code for _ in range(5)} == {401}
    answers = [Api(BAD_KEY).get(ME) for _ in range(4)]
    assert [a.status_code for a in answers] == [401, 401, 401, 429]
    refused = answers[3]
    assert error_of(refused)["details"] == {"limit": "auth-failures", "rate": "3/hour"}
    assert int(refused["Retry-After"]) > 1000 and refused["RateLimit-Policy"] == '"auth-failures";q=3;w=3600'
    # From that address even a valid key is refused: a guess that lands learns nothing.
    blocked = alice_api.get(ME)
    assert blocked.status_code == 429 and error_of(blocked)["details"]["limit"] == "auth-failures"
    # Another address is not held to this one's failures, and a request that authenticates is not
    # told about a limit it did not meet.
    elsewhere = alice_api.client.get(ME, headers=alice_api.headers, REMOTE_ADDR="192.0.2.7")
    assert elsewhere.status_code == 200 and "auth-failures" not in elsewhere["RateLimit-Policy"]


@committed
def test_the_data_plane_counts_failed_authentications_per_address(alice_api, http_server, settings, mcp_settings):
    from tests.conftest import Api
    from tests.mcp.conftest import configure

    configuration = configure(alice_api, url=http_server.url)
    settings.RATE_LIMIT_AUTH_FAILURES = "3/hour"
    path = f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/"
    body = {"name": "echo", "arguments": {"text": "x"}}
    answers = [Api(BAD_KEY).post(path, body) for _ in range(4)]
    assert [a.status_code for a in answers] == [401, 401, 401, 429]
    assert error_of(answers[3])["details"]["limit"] == "auth-failures" and answers[3]["Retry-After"]
    before = http_server.stats().get("tools/call", 0)
    assert alice_api.post(path, body).status_code == 429
    assert http_server.stats().get("tools/call", 0) == before  # nothing reached the server


@committed
def test_the_session_mcp_endpoint_counts_failed_session_tokens(alice_api, settings, mcp_settings):
    from tests.conftest import Api

    session = alice_api.post("/api/v1/sessions/", {"name": "s"}).json()
    settings.RATE_LIMIT_AUTH_FAILURES = "2/hour"
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
                  "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip
    bad = Api("ast_" + "0" * 40, Accept="application/json, text/event-stream")
    statuses = [bad.post(f"/mcp/sessions/{session['id']}/", initialize).status_code for _ in range(3)]
    assert statuses == [401, 401, 429]


def test_failed_authentications_are_counted_even_with_redis_down(settings, db):
    from tests.conftest import Api

    settings.RATE_LIMIT_AUTH_FAILURES = "2/hour"
    settings.REDIS_URL = "redis://127.0.0.1:9/0"
    settings.RATE_LIMIT_FAIL_MODE = "open"  # open for the other classes; never for these
    settings.RATE_LIMIT_EXPECTED_PROCESSES = 1
    ratelimit._sync.client = None
    try:
        assert [Api(BAD_KEY).get(ME).status_code for _ in range(3)] == [401, 401, 429]
    finally:
        ratelimit._sync.client = None
