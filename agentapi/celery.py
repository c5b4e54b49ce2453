"""The Celery application. Tasks are thin: they take ids, set the organization, call a service."""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentapi.settings.local")

app = Celery("agentapi")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@signals.before_task_publish.connect
def _propagate_request_id(headers=None, **_):
    """Carry the publishing request's id into the task, so its logs join the request's."""
    from agentapi.context import current_request_id

    request_id = current_request_id()
    if headers is not None and request_id:
        headers.setdefault("request_id", request_id)


@signals.task_prerun.connect
def _adopt_request_id(task=None, **_):
    from agentapi.context import bind_request

    request_id = getattr(task.request, "request_id", None) if task else None
    bind_request(request_id=request_id)


def _in_worker(task) -> bool:
    """A task run by a worker, not eagerly in its caller's process (whose connections and open
    transaction are the caller's, as Celery's own Django fixup respects)."""
    return task is not None and not getattr(task.request, "is_eager", False)


@signals.task_prerun.connect
def _usable_database(task=None, **_):
    """Before a task: drop a connection that is too old or broke (PostgreSQL restarted meanwhile),
    with one round trip for a connection kept from an earlier task, so the task starts on a working
    one. What Django does around a request, with the health check CONN_HEALTH_CHECKS would add."""
    from django.db import connections

    if not _in_worker(task):
        return
    for connection in connections.all(initialized_only=True):
        if connection.in_atomic_block:
            continue
        connection.close_if_unusable_or_obsolete()
        if connection.connection is not None and not connection.is_usable():
            connection.close()


@signals.task_postrun.connect
def _release_database(task=None, **_):
    """After a task: close what is obsolete or failed (CONN_MAX_AGE, errors), keep the rest."""
    from django.db import connections

    if not _in_worker(task):
        return
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close_if_unusable_or_obsolete()
