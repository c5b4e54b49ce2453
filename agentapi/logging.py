"""JSON log lines that carry the request id, organization and user of the current context."""

import logging

from agentapi import context


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        current = context.current()
        record.request_id = current.request_id if current else None
        record.organization = current.organization if current else None
        record.user = current.user if current else None
        return True
