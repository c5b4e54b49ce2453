from asgiref.sync import sync_to_async

from agentapi.middleware import HybridMiddleware
from audit.recorders import flush_security_events, start_security_events


class SecurityEventMiddleware(HybridMiddleware):
    """Write the request's security events once its response is decided (see audit.recorders)."""

    def call(self, request):
        pending = start_security_events()
        try:
            return self.get_response(request)
        finally:
            flush_security_events(pending)

    async def acall(self, request):
        pending = start_security_events()
        try:
            return await self.get_response(request)
        finally:
            if pending.events:  # nothing to write on almost every request: no thread hand-off
                await sync_to_async(flush_security_events)(pending)
            else:
                flush_security_events(pending)
