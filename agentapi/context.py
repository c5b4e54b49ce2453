"""The request context: who asked, from where, under which request id.

One ContextVar holds it for the request (or task); logging, the audit log and outbound calls read
it. The tenant layer adds the organization and the user once authentication has decided them.
"""

import re
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass
class RequestContext:
    request_id: str
    ip: str | None = None
    user_agent: str = ""
    organization: str | None = None  # slug, for logs
    user: str | None = None  # id, for logs
    extra: dict = field(default_factory=dict)


_context: ContextVar[RequestContext | None] = ContextVar("agentapi_request_context", default=None)


def new_request_id(proposed: str | None = None) -> str:
    """Keep a well-formed X-Request-ID from the caller; otherwise make one."""
    if proposed and _REQUEST_ID.match(proposed):
        return proposed
    return uuid.uuid4().hex


def bind_request(*, request_id: str | None = None, ip: str | None = None, user_agent: str = ""):
    """Start a context for a request or task; returns the token to reset it with."""
    return _context.set(RequestContext(new_request_id(request_id), ip, user_agent[:512]))


def reset(token) -> None:
    _context.reset(token)


def current() -> RequestContext | None:
    return _context.get()


def current_request_id() -> str | None:
    context = _context.get()
    return context.request_id if context else None


def annotate(**values) -> None:
    """Record the organization or user on the current context (for logs)."""
    context = _context.get()
    if context is not None:
        for name, value in values.items():
            setattr(context, name, value)
