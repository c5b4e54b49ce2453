"""The scheduled jobs live in the database (django-celery-beat): beat writes the defaults there,
and operators edit them in the admin."""

from django_celery_beat.models import PeriodicTask
from django_celery_beat.schedulers import DatabaseScheduler

from agentapi.celery import app
from tests.tenants.test_sessions_and_admin import signed_in


def test_beat_installs_the_schedule_and_operators_edit_it_in_the_admin(operator, monkeypatch):
    # Beat closes connections between runs (it is long-lived); here that would close the test's own.
    monkeypatch.setattr("django_celery_beat.schedulers.close_old_connections", lambda: None)
    DatabaseScheduler(app=app, lazy=False)  # what beat does when it starts
    refresh = PeriodicTask.objects.get(name="refresh-oauth-tokens")
    assert refresh.task == "oauth.tasks.oauth_tokens_refresh_expiring" and refresh.interval.every == 60
    assert PeriodicTask.objects.get(name="check-mcp-servers").task == "mcp.tasks.mcp_configurations_check_health"
    assert PeriodicTask.objects.get(name="expire-agent-sessions").task == "sessions_app.tasks.agent_sessions_expire"
    client = signed_in("operator@platform.test")
    page = client.get(f"/admin/django_celery_beat/periodictask/{refresh.pk}/change/")
    assert page.status_code == 200 and "oauth.tasks.oauth_tokens_refresh_expiring" in page.content.decode()
    changed = client.post(
        f"/admin/django_celery_beat/periodictask/{refresh.pk}/change/",
        {"name": refresh.name, "regtask": refresh.task, "task": refresh.task, "enabled": "", "interval": refresh.interval_id,
         "args": "[]", "kwargs": "{}", "queue": "", "exchange": "", "routing_key": "", "headers": "{}", "priority": "",
         "expires_": "", "expire_seconds": "", "one_off": "", "start_time_0": "", "start_time_1": "", "description": ""},
    )  # fmt: skip
    assert changed.status_code == 302, changed.content.decode()[:3000]
    refresh.refresh_from_db()
    assert refresh.enabled is False  # an operator paused the job


def test_staff_who_are_not_operators_do_not_see_the_schedule(alice):
    from tenants.models import User

    User.objects.filter(pk=alice.user_id).update(is_staff=True)
    assert signed_in("alice@acme.test").get("/admin/django_celery_beat/periodictask/").status_code == 403
