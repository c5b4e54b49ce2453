"""Test doubles of hosted model APIs (they cannot run here), small and speaking the real wire
protocols on loopback: an OpenAI-compatible Chat Completions server and an Anthropic Messages
server (streaming or not), plus coder/agentapi's GET /status. They record each request, so tests
can check what the platform sent.

What they answer is a script: to a request whose conversation ends with the user's message, the
tool calls in `tool_calls` (when there are any), then, once the conversation ends with the tools'
results, the text `reply`. Without tool calls, the text at once. Streamed text comes a word per
chunk, `chunk_delay` apart; `delay` holds every answer back (to catch a run mid-way)."""

import asyncio
import json
import threading
import time

from aiohttp import web


class ModelDouble:
    def __init__(self, port: int = 0, agentapi_prefix: str = "/agentapi"):
        self.wanted_port = port
        self.agentapi_prefix = agentapi_prefix
        self.requests: list[dict] = []
        self.fail_with: int | None = None
        self.tool_calls: list[tuple[str, dict]] = []
        self.reply = "The double has answered."
        self.delay = 0.0
        self.chunk_delay = 0.0
        # The coder/agentapi double: a terminal agent's transcript, its status and subscribers.
        self.transcript: list[dict] = [{"id": 0, "role": "agent", "content": "Welcome to the double's terminal.",
                                        "time": self._now()}]  # fmt: skip
        self.agent_status = "stable"
        self.raw: list[str] = []
        self.stopped = False
        self.subscribers: list[asyncio.Queue] = []
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        started.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"

    def _run(self, started):
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.openai)
        app.router.add_post("/v1/messages", self.anthropic)
        app.router.add_get(f"{self.agentapi_prefix}/status", self.agentapi_status)
        app.router.add_get(f"{self.agentapi_prefix}/messages", self.agentapi_messages)
        app.router.add_post(f"{self.agentapi_prefix}/message", self.agentapi_message)
        app.router.add_get(f"{self.agentapi_prefix}/events", self.agentapi_events)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", self.wanted_port)
        self.loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()

    def _record(self, request, body):
        self.requests.append(
            {"path": request.path, "headers": {k.lower(): v for k, v in request.headers.items()}, "body": body}
        )

    def _failure(self):
        if self.fail_with:
            return web.json_response({"error": {"message": "double says no", "type": "error"}}, status=self.fail_with)
        return None

    def _words(self) -> list[str]:
        words = self.reply.split(" ")
        return [word + (" " if i < len(words) - 1 else "") for i, word in enumerate(words)]

    async def _sse(self, request, chunks):
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        for event, data in chunks:
            if data == "[text-pause]":
                await asyncio.sleep(self.chunk_delay)
                continue
            prefix = f"event: {event}\n" if event else ""
            payload = data if isinstance(data, str) else json.dumps(data)
            await response.write(f"{prefix}data: {payload}\n\n".encode())
        await response.write_eof()
        return response

    async def openai(self, request):
        body = await request.json()
        self._record(request, body)
        if self.delay:
            await asyncio.sleep(self.delay)
        failure = self._failure()
        if failure is not None:
            return failure
        calling = bool(self.tool_calls) and body["messages"][-1]["role"] != "tool"
        if body.get("stream"):
            return await self._sse(request, self._openai_chunks(body, calling))
        if calling or body.get("tools"):
            raise web.HTTPBadRequest(text="the double streams tool conversations only")
        return web.json_response({
            "id": "chatcmpl-double", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "OK"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
        })  # fmt: skip

    def _openai_chunks(self, body, calling: bool):
        def chunk(delta, finish=None, **extra):
            return None, {"id": "chatcmpl-double", "object": "chat.completion.chunk", "created": int(time.time()),
                          "model": body["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                          **extra}  # fmt: skip

        yield chunk({"role": "assistant", "content": ""})
        if calling:
            for index, (name, arguments) in enumerate(self.tool_calls):
                yield chunk({"tool_calls": [{"index": index, "id": f"call_{index}", "type": "function",
                                             "function": {"name": name, "arguments": ""}}]})  # fmt: skip
                yield chunk({"tool_calls": [{"index": index, "function": {"arguments": json.dumps(arguments)}}]})
            yield chunk({}, "tool_calls")
        else:
            for word in self._words():
                yield None, "[text-pause]"
                yield chunk({"content": word})
            yield chunk({}, "stop")
        usage = {"prompt_tokens": 20, "completion_tokens": 5, "total_tokens": 25}
        yield None, {**chunk({})[1], "choices": [], "usage": usage}
        yield None, "[DONE]"

    async def anthropic(self, request):
        body = await request.json()
        self._record(request, body)
        if self.delay:
            await asyncio.sleep(self.delay)
        failure = self._failure()
        if failure is not None:
            return failure
        last = body["messages"][-1]
        answered = isinstance(last["content"], list) and any(
            block.get("type") == "tool_result" for block in last["content"]
        )
        calling = bool(self.tool_calls) and not answered
        if body.get("stream"):
            return await self._sse(request, self._anthropic_events(body, calling))
        if calling or body.get("tools"):
            raise web.HTTPBadRequest(text="the double streams tool conversations only")
        return web.json_response({
            "id": "msg_double", "type": "message", "role": "assistant", "model": body["model"],
            "content": [{"type": "text", "text": "OK"}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 11, "output_tokens": 1},
        })  # fmt: skip

    def _anthropic_events(self, body, calling: bool):
        yield "message_start", {"type": "message_start", "message": {
            "id": "msg_double", "type": "message", "role": "assistant", "model": body["model"], "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 30, "output_tokens": 1}}}  # fmt: skip
        if calling:
            for index, (name, arguments) in enumerate(self.tool_calls):
                yield "content_block_start", {"type": "content_block_start", "index": index, "content_block": {
                    "type": "tool_use", "id": f"toolu_{index}", "name": name, "input": {}}}  # fmt: skip
                yield "content_block_delta", {"type": "content_block_delta", "index": index,
                                              "delta": {"type": "input_json_delta", "partial_json": json.dumps(arguments)}}  # fmt: skip
                yield "content_block_stop", {"type": "content_block_stop", "index": index}
            stop = "tool_use"
        else:
            yield "content_block_start", {"type": "content_block_start", "index": 0,
                                          "content_block": {"type": "text", "text": ""}}  # fmt: skip
            for word in self._words():
                yield None, "[text-pause]"
                yield "content_block_delta", {"type": "content_block_delta", "index": 0,
                                              "delta": {"type": "text_delta", "text": word}}  # fmt: skip
            yield "content_block_stop", {"type": "content_block_stop", "index": 0}
            stop = "end_turn"
        yield "message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                "usage": {"output_tokens": 7}}  # fmt: skip
        yield "message_stop", {"type": "message_stop"}

    @staticmethod
    def _now() -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def _publish(self, event: str, data: dict) -> None:
        for queue in self.subscribers:
            queue.put_nowait((event, data))

    def _update(self, message: dict) -> None:
        self._publish("message_update", {"id": message["id"], "message": message["content"], "role": message["role"],
                                         "time": message["time"]})  # fmt: skip

    def _status(self, status: str) -> None:
        self.agent_status = status
        self._publish("status_change", {"status": status, "agent_type": "claude"})

    async def agentapi_status(self, request):
        self._record(request, None)
        return self._failure() or web.json_response({"status": self.agent_status, "agent_type": "claude"})

    async def agentapi_messages(self, request):
        self._record(request, None)
        return web.json_response({"messages": self.transcript})

    async def agentapi_message(self, request):
        body = await request.json()
        self._record(request, body)
        if body.get("type") == "raw":
            self.raw.append(body["content"])
            self.stopped = self.stopped or body["content"] == "\x1b"  # Escape: the terminal agent stops
            return web.json_response({"ok": True})
        if self.agent_status != "stable":
            return web.json_response({"title": "Bad Request", "status": 400, "detail": "agent is running"}, status=400)
        self.stopped = False
        user = {"id": len(self.transcript), "role": "user", "content": body["content"], "time": self._now()}
        self.transcript.append(user)
        self._update(user)
        self._status("running")
        self.loop.create_task(self._answer())
        return web.json_response({"ok": True})

    async def _answer(self):
        reply = {"id": len(self.transcript), "role": "agent", "content": "", "time": self._now()}
        self.transcript.append(reply)
        await asyncio.sleep(self.delay)
        for word in self._words():
            if self.stopped:
                break
            await asyncio.sleep(self.chunk_delay)
            reply["content"] += word
            self._update(reply)
        self._status("stable")

    async def agentapi_events(self, request):
        self._record(request, None)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        queue: asyncio.Queue = asyncio.Queue()
        for message in self.transcript:  # as agentapi does: first the state, then what happens
            queue.put_nowait(("message_update", {"id": message["id"], "message": message["content"],
                                                 "role": message["role"], "time": message["time"]}))  # fmt: skip
        queue.put_nowait(("status_change", {"status": self.agent_status, "agent_type": "claude"}))
        self.subscribers.append(queue)
        try:
            while True:
                event, data = await queue.get()
                await response.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.subscribers.remove(queue)
        return response


def main() -> None:
    """`python -m tests.sessions.model_doubles [--port N] [--reply TEXT] [--tool NAME JSON]...`: the
    doubles on their own, for the README's tour and benchmarks (OpenAI-compatible at <url>/v1,
    Anthropic at <url>, coder/agentapi at <url>/agentapi). Ctrl-C stops it."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reply", default="Hello! I am the model double; no model was harmed.")
    parser.add_argument("--tool", nargs=2, action="append", default=[], metavar=("NAME", "ARGUMENTS_JSON"),
                        help="a tool call to answer the user's message with (repeatable)")  # fmt: skip
    parser.add_argument("--chunk-delay", type=float, default=0.05, help="seconds between streamed words")
    args = parser.parse_args()
    double = ModelDouble(port=args.port)
    double.reply, double.chunk_delay = args.reply, args.chunk_delay
    double.tool_calls = [(name, json.loads(arguments)) for name, arguments in args.tool]
    print(f"model double on {double.url}: OpenAI-compatible {double.url}/v1, Anthropic {double.url}, "
          f"coder/agentapi {double.url}/agentapi", flush=True)  # fmt: skip
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
