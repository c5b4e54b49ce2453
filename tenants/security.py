"""Security events the tenant layer observes but does not record itself.

tenants imports no other app (DESIGN.md), so failed authentications and lookups that may have
reached into another organization are reported here, and the audit app, which registers a handler
at start-up, writes them: after the response, outside the request's transaction, so that the
rollback of a failed request does not take its record with it.
"""

_handlers: list = []


def on_security_event(handler) -> None:
    if handler not in _handlers:
        _handlers.append(handler)


def report(kind: str, **facts) -> None:
    """kind: "authentication_failed" (facts: reason, credential, organization_id?) or
    "lookup_denied" (facts: model, pk): an id that was not found in the caller's organization."""
    for handler in _handlers:
        handler(kind, **facts)
