from audit.recorders import deferred_security_events


class SecurityEventMiddleware:
    """Write the request's security events once its response is decided (see audit.recorders)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        with deferred_security_events():
            return self.get_response(request)
