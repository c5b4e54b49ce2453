"""The threads that run synchronous request work under ASGI.

A fixed pool, so each thread keeps its own persistent database connection (CONN_MAX_AGE, with
health checks) instead of a new thread, and a new connection, per request as Django's per-request
thread-sensitive context would give. WEB_THREADS bounds how many synchronous requests one process
runs at once (and so its database connections).
"""

import asyncio
import contextvars
import threading
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.conf import settings

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()
_serving = False


def serve_on_pool() -> None:
    """Called by the ASGI handler: from now on, in_worker() runs on the pool."""
    global _serving
    _serving = True


def executor() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        with _lock:
            if _executor is None:
                _executor = ThreadPoolExecutor(max_workers=settings.WEB_THREADS, thread_name_prefix="web")
    return _executor


def in_worker(func):
    """`await in_worker(func)(*args)`: run sync code (database work) on a worker thread.

    Outside the ASGI web process (WSGI, the test client, commands) there is no pool: the code runs
    in the calling sync thread, with that thread's database connection and transaction.
    """
    if not _serving:
        return sync_to_async(func, thread_sensitive=True)
    return sync_to_async(func, thread_sensitive=False, executor=executor())


async def run_whole(func, *args):
    """`await run_whole(func, *args)`: in_worker(func)(*args) for work that must not be left
    running when its awaiter is cancelled: a call not yet started then never starts, and one
    already running is waited for before the cancellation goes on.

    Django's ASGI handler cancels a request's task when its client disconnects and then closes the
    request's body; asgiref's sync_to_async returns from the cancellation at once while the view's
    thread runs on, so a view that read its body after that failed on the closed file and was
    logged as a 500 that no client received (the load suite's users leaving did it).
    Here the executor's own future decides, under its lock, between "cancelled" and "running".
    """
    if not _serving:
        return await sync_to_async(func, thread_sensitive=True)(*args)
    job = executor().submit(contextvars.copy_context().run, func, *args)
    waited = asyncio.wrap_future(job)
    try:
        return await asyncio.shield(waited)
    except asyncio.CancelledError:
        if not job.cancel():
            await asyncio.wait([waited])
            if not waited.cancelled():
                waited.exception()  # its outcome is nobody's now: the client is gone
        raise
