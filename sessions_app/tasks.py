from celery import shared_task

from sessions_app import services


@shared_task
def agent_sessions_expire():
    """The scheduled expiry: active sessions past their idle time or maximum age."""
    return services.expire_due()
