"""The request context middleware: request id in, request id out, one context per request."""

from agentapi import context


def client_ip(request) -> str | None:
    # REMOTE_ADDR is what the socket saw; behind the documented reverse proxy, gunicorn/uvicorn's
    # --forwarded-allow-ips makes it the client's address, so we never parse X-Forwarded-For here.
    return request.META.get("REMOTE_ADDR") or None


class RequestContextMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = context.bind_request(
            request_id=request.headers.get("X-Request-ID"),
            ip=client_ip(request),
            user_agent=request.headers.get("User-Agent", ""),
        )
        try:
            request.request_id = context.current_request_id()
            response = self.get_response(request)
            response["X-Request-ID"] = request.request_id
            return response
        finally:
            context.reset(token)
