from celery import shared_task

from tenants import idempotency


@shared_task
def idempotency_records_purge():
    """The scheduled purge of Idempotency-Key records older than IDEMPOTENCY_KEY_TTL_SECONDS."""
    return idempotency.purge_expired()
