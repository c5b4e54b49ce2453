"""`make run` as a new user meets it: embedded defaults, nothing installed, a demo to try at once."""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EMBEDDED_ENV = {
    name: value
    for name, value in os.environ.items()
    if name not in {"DATABASE_URL", "DATABASE_OWNER_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}
}


def start(var_dir: Path):
    env = {**EMBEDDED_ENV, "AGENTAPI_VAR_DIR": str(var_dir), "PORT": "0"}
    process = subprocess.Popen(
        [sys.executable, "scripts/run.py"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    output, deadline = [], time.monotonic() + 90
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        output.append(line)
        match = re.search(r"Serving (http://127\.0\.0\.1:\d+)", line)
        if match:
            return process, match.group(1), "".join(output)
        if process.poll() is not None:
            break
    process.kill()
    pytest.fail("make run did not come up:\n" + "".join(output))


def wait_until_live(base_url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base_url + "/health/live/", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail("the web process never answered")


def get(base_url: str, path: str, key: str | None = None) -> dict:
    request = urllib.request.Request(base_url + path, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def stop(process) -> int:
    """Ctrl-C, as a person would. Everything make run started must be gone with it: a process left
    behind would hold the output pipe open, and communicate() would time out."""
    if hasattr(process, "output"):  # already stopped (on the way to a failure message)
        return process.returncode
    process.send_signal(signal.SIGINT)
    process.output = process.communicate(timeout=30)[0]  # kept for the failure message
    return process.returncode


@pytest.mark.slow
def test_make_run_serves_a_demo_on_embedded_defaults_and_reuses_it(tmp_path):
    process, base_url, output = start(tmp_path)
    try:
        key = re.search(r"API key:\s+(aak_\S+)", output).group(1)
        password = re.search(r"admin@demo\.local / (\S+)", output).group(1)
        wait_until_live(base_url)
        me = get(base_url, "/api/v1/me/", key)
        assert me["organization"]["slug"] == "demo" and me["role"] == "owner"
        ready = get(base_url, "/health/ready/")
        assert ready["status"] == "ok" and ready["checks"]["broker"]["ok"]
        assert password
        # The export streams from the ASGI worker pool (the test client cannot show that path).
        request = urllib.request.Request(
            base_url + "/api/v1/audit/events/export/", headers={"Authorization": f"Bearer {key}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                lines = [json.loads(line) for line in response.read().decode().splitlines()]
        except urllib.error.HTTPError:
            stop(process)
            pytest.fail("export failed; the server said:\n" + process.output[-5000:])
        assert {"tenants.organization.create", "tenants.api_key.create"} <= {line["action"] for line in lines}
    finally:
        assert stop(process) == 0
    assert (tmp_path / "db.sqlite3").exists()

    again, base_url, output = start(tmp_path)
    try:
        assert "API key:" not in output and "exists" in output  # shown once, never again
        wait_until_live(base_url)
        assert get(base_url, "/api/v1/me/", key)["user"]["email"] == "admin@demo.local"
    finally:
        assert stop(again) == 0
