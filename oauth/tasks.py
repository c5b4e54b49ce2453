from celery import shared_task

from oauth import services


@shared_task
def oauth_tokens_refresh_expiring():
    """The scheduled refresh: tokens expiring within OAUTH_REFRESH_WINDOW_SECONDS."""
    return services.refresh_expiring()
