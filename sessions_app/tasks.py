from celery import shared_task

from sessions_app import runs, services


@shared_task
def agent_sessions_expire():
    """The scheduled expiry: active sessions past their idle time or maximum age."""
    return services.expire_due()


@shared_task(acks_late=True, reject_on_worker_lost=True)
def agent_run(organization_id, run_id):
    """One run of a session's agent (sessions_app.runs.execute: claimed once, never replayed; in its
    organization's scope, which its claim reads)."""
    return runs.execute_task(organization_id, run_id)


@shared_task
def agent_runs_reap():
    """The scheduled reaper: runs that lost their worker, or never started, are failed."""
    return runs.reap()
