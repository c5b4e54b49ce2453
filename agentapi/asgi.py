"""The web process: `gunicorn -c docker/gunicorn.conf.py agentapi.asgi:application`.

Django's stock ASGI handler runs a synchronous view behind an async middleware chain, and in that
mode every MiddlewareMixin (sessions, CSRF, auth, messages, security...) runs each of its hooks
through its own sync_to_async call: about 34 thread hand-offs per request, 4.6 ms in-process
against 0.2 ms for the same request under WSGI (measured; README, "Speed"). It also starts a new
thread per request, and with it a new database connection.

Our API views are synchronous, so this handler loads the synchronous middleware chain and runs it
in one hand-off, on a fixed pool of worker threads that keep their database connections
(agentapi.workers). It stays an ASGI application: the event loop, streaming responses (async
iterators, as the audit export uses) and, later, natively async endpoints.
"""

import os

import django
from django.core.handlers.asgi import ASGIHandler
from django.db import close_old_connections
from django.http import FileResponse

from agentapi.workers import in_worker

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentapi.settings.local")


class SyncChainASGIHandler(ASGIHandler):
    def __init__(self):
        from agentapi import workers

        super().__init__()
        workers.serve_on_pool()

    def load_middleware(self, is_async=False):
        super().load_middleware(is_async=False)

    async def __call__(self, scope, receive, send):
        # Unlike the stock handler, no per-request ThreadSensitiveContext: Django's own
        # bookkeeping hops (request signals, closing the response) share one thread, and the
        # request's work runs on the worker pool.
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        await self.handle(scope, receive, send)

    async def _lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def run_get_response(self, request):
        response = await in_worker(self._get_response_on_worker)(request)
        response._handler_class = self.__class__
        if isinstance(response, FileResponse):
            response.block_size = self.chunk_size
        return response

    def _get_response_on_worker(self, request):
        # The worker's connection lives across requests: drop it here if it broke or aged out,
        # which is what the request_started signal does for a thread-per-request server.
        close_old_connections()
        return self.get_response(request)


django.setup(set_prefix=False)
application = SyncChainASGIHandler()
