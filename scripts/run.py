"""`make run`: the platform on embedded defaults, nothing to install.

Migrates the SQLite database in var/, makes the demo organization once (printing its admin
password and API key that one time), then serves the admin, the API and the scheduled jobs:
uvicorn for the web, one Celery worker with beat embedded on a filesystem broker in var/.
Ctrl-C stops everything. Running it again reuses what exists.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_port(preferred: int) -> int:
    if preferred and port_free(preferred):
        return preferred
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    if preferred:
        print(f"Port {preferred} is taken; using {port}.", flush=True)
    return port


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", 8000)))
    args = parser.parse_args()
    env = {"DJANGO_SETTINGS_MODULE": "agentapi.settings.local", **os.environ, "PYTHONUNBUFFERED": "1"}
    port = pick_port(args.port)
    base_url = f"http://127.0.0.1:{port}"
    env.setdefault("AGENT_TERMINAL_PLATFORM_URL", base_url)  # where terminal agents reach the session's tools
    manage = [sys.executable, str(ROOT / "manage.py")]
    subprocess.run([*manage, "migrate", "-v", "0"], check=True, env=env, cwd=ROOT)
    subprocess.run([*manage, "bootstrap_demo", "--base-url", base_url], check=True, env=env, cwd=ROOT)
    processes = [
        subprocess.Popen(
            [str(BIN / "celery"), "-A", "agentapi", "--quiet", "worker", "--beat", "--pool=solo", "--loglevel=WARNING"],
            env=env,
            cwd=ROOT,
            start_new_session=True,  # its own process group: stopping it stops what it forked
        ),
        subprocess.Popen(
            [
                str(BIN / "uvicorn"),
                "agentapi.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-access-log",
                "--lifespan",
                "off",
            ],
            env=env,
            cwd=ROOT,
            start_new_session=True,  # its own process group: stopping it stops what it forked
        ),
    ]
    print(
        f"\nServing {base_url}  (admin: {base_url}/admin/, API docs: {base_url}/api/docs/). Ctrl-C stops.\n", flush=True
    )
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and all(p.poll() is None for p in processes):
        time.sleep(0.2)
    # Signal each child's whole group: the worker forks beat, which must not outlive it.
    for process in processes:
        signal_group(process, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            signal_group(process, signal.SIGKILL)
            process.wait()
        signal_group(process, signal.SIGKILL)  # anything of the group still left
    return 0 if stopping else 1


def signal_group(process: subprocess.Popen, sig) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


if __name__ == "__main__":
    sys.exit(main())
