"""Test doubles of hosted model APIs (they cannot run here), small and speaking the real wire
protocols on loopback: an OpenAI-compatible Chat Completions server and an Anthropic Messages
server, each answering "OK", plus coder/agentapi's GET /status. They record each request's
credential header, so tests can check what the platform sent."""

import asyncio
import threading
import time

from aiohttp import web


class ModelDouble:
    def __init__(self):
        self.requests: list[dict] = []
        self.fail_with: int | None = None
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
        app.router.add_get("/agentapi/status", self.agentapi_status)
        runner = web.AppRunner(app)
        self.loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
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

    async def openai(self, request):
        body = await request.json()
        self._record(request, body)
        return self._failure() or web.json_response({
            "id": "chatcmpl-double", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "OK"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 1, "total_tokens": 13},
        })  # fmt: skip

    async def anthropic(self, request):
        body = await request.json()
        self._record(request, body)
        return self._failure() or web.json_response({
            "id": "msg_double", "type": "message", "role": "assistant", "model": body["model"],
            "content": [{"type": "text", "text": "OK"}], "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 11, "output_tokens": 1},
        })  # fmt: skip

    async def agentapi_status(self, request):
        self._record(request, None)
        return self._failure() or web.json_response({"status": "stable", "agent_type": "claude"})
