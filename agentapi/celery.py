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
