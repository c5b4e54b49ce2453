"""The web process: `gunicorn -c docker/gunicorn.conf.py agentapi.asgi:application`.

Django's stock ASGI handler runs a synchronous view behind an async middleware chain, and in that
mode every MiddlewareMixin (sessions, CSRF, auth, messages, security...) runs each of its hooks
through its own sync_to_async call: about 34 thread hand-offs per request, 4.6 ms in-process
against 0.2 ms for the same request under WSGI (measured; README, "Speed"). It also starts a new
thread per request, and with it a new database connection.

Our API views are synchronous, so this handler loads the synchronous middleware chain and runs it
in one hand-off, on a fixed pool of worker threads that keep their database connections
(agentapi.workers). It stays an ASGI application: the event loop, streaming responses (async
iterators, as the audit export uses), and the data plane: the routes in DATA_PLANE_ROUTES are
answered natively on the event loop by agentapi.dataplane, before Django (DESIGN.md, two planes).
"""

import gc
import os

import django
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.db import close_old_connections
from django.http import FileResponse
from django.utils.module_loading import import_string

from agentapi.workers import run_whole

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentapi.settings.local")


class SyncChainASGIHandler(ASGIHandler):
    def __init__(self):
        from agentapi import dataplane, workers

        super().__init__()
        workers.serve_on_pool()
        self._started = False
        self._data_plane = dataplane.enabled()

    def _start(self):
        # On the server's loop, before the first request: the MCP pool adopts this loop.
        self._started = True
        for path in settings.EVENT_LOOP_STARTUP:
            import_string(path)()

    def load_middleware(self, is_async=False):
        super().load_middleware(is_async=False)

    async def __call__(self, scope, receive, send):
        # Unlike the stock handler, no per-request ThreadSensitiveContext: Django's own
        # bookkeeping hops (request signals, closing the response) share one thread, and the
        # request's work runs on the worker pool.
        if not self._started:
            self._start()
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        from agentapi import dataplane

        found = dataplane.match_app(scope)
        if found is not None:
            return await dataplane.serve_app(*found, scope, receive, send)
        if self._data_plane:
            found = dataplane.match(scope)
            if found is not None:
                return await dataplane.serve(*found, scope, receive, send)
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
        # The whole request, or none of it, even when its client goes (workers.run_whole).
        response = await run_whole(self._get_response_on_worker, request)
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
# What is loaded by now (Django, the apps, their modules: about 200,000 objects) lives as long as
# the process: kept out of the cyclic collector's reach, a full collection no longer walks it on
# the request path (measured: 0.3-0.5 ms of CPU per data-plane call on average, and the rare
# tens-of-milliseconds pauses at p95 and above).
gc.freeze()
