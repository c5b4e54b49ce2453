from celery import shared_task
from django.conf import settings

from audit import sequencer
from audit.retention import audit_events_purge


@shared_task
def audit_events_purge_expired():
    """The scheduled retention job (daily): the console's hourly tool-call counts older than two
    days; the events themselves only when AUDIT_RETENTION_DAYS is set."""
    sequencer.tool_call_hours_purge()
    if settings.AUDIT_RETENTION_DAYS > 0:
        audit_events_purge(older_than_days=settings.AUDIT_RETENTION_DAYS)


@shared_task(ignore_result=True)
def audit_chain_extend():
    """The sequencer, run by beat every AUDIT_SEQUENCER_INTERVAL seconds; one at a time."""
    return sequencer.audit_chain_extend()
