"""Tool calls on the stateless wire (mcp.wire) against the real fastmcp server: the request is the
one the SDK's client sends, answers in JSON and in SSE streams read alike, errors classified alike.

Each test makes the same call both ways through the pool (the wire: `upstream.call_tool`; the SDK:
`upstream.client.call_tool`) and compares what the server received and what came back."""

import itertools

import pytest

from mcp import pool
from mcp.proxy import REQUEST_ID_META
from tests.mcp.conftest import RunningServer

# The pool's breaker and limits are per configuration id: ids of their own for these targets.
_ids = itertools.count(7_000_001)


@pytest.fixture
def sse_server():
    server = RunningServer("--sse-answers")
    yield server
    server.stop()


def target(server) -> pool.Target:
    return pool.Target(configuration_id=next(_ids), organization_id=1, revision=1, transport="http", url=server.url)


def both_ways(server, name: str, arguments: dict):
    """The tool's result and what the server received, sent on the wire then by the SDK."""
    reach = target(server)
    outcomes = []
    for way in ("wire", "sdk"):

        async def operation(upstream, way=way):
            if way == "wire":
                return await upstream.call_tool(name, arguments, meta={REQUEST_ID_META: "req-1"})
            result = await upstream.client.call_tool(name, arguments, meta={REQUEST_ID_META: "req-1"})
            return result.model_dump(mode="json", by_alias=True, exclude_none=True)

        result = pool.call(reach, operation, reads=False)
        outcomes.append((result, server.last_call()))
    return outcomes


def comparable(received: dict) -> tuple[dict, dict]:
    body = {key: value for key, value in received["body"].items() if key != "id"}
    headers = {key: value for key, value in received["headers"].items() if key != "user-agent"}
    return headers, body


def test_a_tool_call_on_the_wire_is_the_call_the_sdk_sends(http_server):
    (wire_result, on_wire), (sdk_result, by_sdk) = both_ways(http_server, "add", {"a": 2, "b": 3})
    assert "aiohttp" in on_wire["headers"]["user-agent"] and "httpx2" in by_sdk["headers"]["user-agent"]
    assert comparable(on_wire) == comparable(by_sdk)
    headers, body = comparable(on_wire)
    assert headers["mcp-method"] == "tools/call" and headers["mcp-name"] == "add"
    assert headers["mcp-protocol-version"] == body["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"]
    assert body["params"]["_meta"][REQUEST_ID_META] == "req-1"
    assert wire_result["structuredContent"] == sdk_result["structuredContent"] == {"sum": 5}
    assert wire_result["content"] == sdk_result["content"]


def test_every_content_type_comes_back_as_the_sdk_reads_it(http_server):
    (wire_result, _), (sdk_result, _) = both_ways(http_server, "media", {})
    assert [block["type"] for block in wire_result["content"]] == [
        "text", "image", "audio", "resource", "resource_link",
    ]  # fmt: skip
    assert wire_result["content"] == sdk_result["content"]


def test_an_answer_streamed_as_server_sent_events_is_read_to_its_result(sse_server):
    for name in ("echo", "chatty"):
        arguments = {"text": "over sse"} if name == "echo" else {}
        answered = sse_server.stats().get("sse-answer", 0)
        (wire_result, on_wire), (sdk_result, _) = both_ways(sse_server, name, arguments)
        assert sse_server.stats()["sse-answer"] >= answered + 2  # both calls were answered as streams
        assert "aiohttp" in on_wire["headers"]["user-agent"]
        assert wire_result["content"] == sdk_result["content"]
        assert wire_result["content"][0]["text"] == ("over sse" if name == "echo" else "done")


def test_a_json_rpc_error_is_classified_as_the_sdks_is(http_server):
    reach = target(http_server)

    async def on_wire(upstream):
        return await upstream.call_tool("refuse", {})

    async def by_sdk(upstream):
        return await upstream.client.call_tool("refuse", {})

    errors = []
    for operation in (on_wire, by_sdk):
        with pytest.raises(pool.UpstreamError) as raised:
            pool.call(reach, operation, reads=False)
        errors.append((type(raised.value), raised.value.status, raised.value.code, str(raised.value)))
    assert errors[0] == errors[1] == (pool.UpstreamRejected, 400, "upstream_rejected", "refused")


def test_a_tool_error_is_a_result_with_is_error(http_server):
    (wire_result, _), (sdk_result, _) = both_ways(http_server, "fail", {})
    assert wire_result["isError"] is True and sdk_result["isError"] is True
    assert wire_result["content"] == sdk_result["content"]


@pytest.mark.parametrize("answers", ["json", "sse"])
def test_an_answer_over_the_limit_is_refused_unread_and_the_session_stays(answers, http_server, sse_server, settings):
    settings.MCP_MAX_RESULT_BYTES = 1000
    server = http_server if answers == "json" else sse_server
    reach = target(server)

    async def huge(upstream):
        return await upstream.call_tool("echo", {"text": "z" * 200_000})

    async def small(upstream):
        return await upstream.call_tool("echo", {"text": "small"})

    with pytest.raises(pool.UpstreamTooLarge) as raised:
        pool.call(reach, huge, reads=False)
    assert raised.value.status == 502 and raised.value.code == "upstream_result_too_large"
    assert "MCP_MAX_RESULT_BYTES" in str(raised.value)
    handshakes = server.handshakes()
    assert pool.call(reach, small, reads=False)["content"][0]["text"] == "small"
    assert server.handshakes() == handshakes  # the session was not dropped for it
