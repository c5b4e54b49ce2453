from celery import shared_task, signals

from sessions_app import runs, services, terminals


@shared_task
def agent_sessions_expire():
    """The scheduled expiry: active sessions past their idle time or maximum age."""
    return services.expire_due()


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True)
def agent_run(self, organization_id, run_id, forwarded=False):
    """One run of a session's agent (sessions_app.runs.execute: claimed once, never replayed; in its
    organization's scope, which its claim reads). `forwarded`: handed here by another node, the
    one whose terminal agent the session has (sessions_app.terminals)."""
    return runs.execute_task(organization_id, run_id, node=self.request.hostname, forwarded=forwarded)


@shared_task
def agent_runs_reap():
    """The scheduled reaper: runs that lost their worker, or never started, are failed."""
    return runs.reap()


@signals.worker_process_shutdown.connect
@signals.worker_shutdown.connect
def _stop_terminals(**_):
    """A stopping worker stops the terminal agents its process started (sessions_app.terminals)."""
    terminals.stop_all()
