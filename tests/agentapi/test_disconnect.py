"""A client that leaves in the middle of a management-plane request: the view it started runs to
its end with the request it was given, and nothing is logged as a 500. Before, Django's ASGI
handler closed the request's body while the view's thread still ran (asgiref returns from the
cancellation at once), and a view that read its body then failed on the closed file, logged as a
500 no client received (agentapi.workers.run_whole). A real uvicorn process."""

import socket
import time
import urllib.parse

from tests.sessions.test_mcp_endpoint import start_web


def test_a_view_whose_client_left_runs_to_its_end_and_no_500_is_logged(tmp_path):
    record = tmp_path / "read"
    process, base = start_web(DJANGO_SETTINGS_MODULE="tests.agentapi.slow_settings", SLOW_VIEW_RECORD=str(record))
    try:
        address = urllib.parse.urlsplit(base)
        bodies = [f'{{"n": {n}}}'.encode() for n in range(3)]
        for body in bodies:
            with socket.create_connection((address.hostname, address.port)) as client:
                client.sendall(
                    b"POST /test/slow-echo/?sleep=0.5 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    b"Content-Type: application/json\r\n" + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
                )
                time.sleep(0.15)  # the view is running, not yet reading its body: the client leaves
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not record.exists() or record.read_bytes().count(b"\n") < 3):
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        process.terminate()
        process.wait(10)
    log = process.stderr.read().decode()
    assert "Internal Server Error" not in log and "closed file" not in log, log
    read = record.read_bytes().splitlines() if record.exists() else []
    assert sorted(read) == sorted(bodies)  # each view read its whole body
