"""Small HTTP doubles for what cannot run here (GitHub's token endpoint and its quirks; a provider
whose metadata refuses S256). Each is a few routes on loopback, named as a double where used."""

import contextlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl


@contextlib.contextmanager
def serve_json(routes: dict):
    """Serve routes on loopback: path -> dict (GET, JSON) or callable(form) -> (status, content type, body)."""
    calls = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status, content_type, body: bytes):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            route = routes.get(self.path)
            if isinstance(route, (dict, list)):
                return self._answer(200, "application/json", json.dumps(route).encode())
            return self._answer(404, "text/plain", b"not found")

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            form = dict(parse_qsl(self.rfile.read(length).decode()))
            calls.append((self.path, form, dict(self.headers)))
            route = routes.get(self.path)
            if callable(route):
                return self._answer(*route(form, dict(self.headers)))
            return self._answer(404, "text/plain", b"not found")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)  # shutdown waits a poll
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        serve_json.calls = calls
        yield base
    finally:
        server.shutdown()
        server.server_close()
