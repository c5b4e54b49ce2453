"""Run a command against a throwaway PostgreSQL 15 cluster and redis-server (and make sure Debian's
chromium is there for the browser tests).

    python tests/services.py -- pytest -q          (what `make test` runs)

Both servers listen on free loopback ports in a temporary directory and are stopped, and the
directory removed, however the command ends. The cluster gets the roles DESIGN.md describes: a
table-owner role that migrates (DATABASE_OWNER_URL) and an application role with no superuser,
no BYPASSRLS and nothing owned (DATABASE_URL). initdb refuses to run as root, so as root the
cluster runs as the `postgres` user.
"""

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_CANDIDATES = ["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin", "/usr/lib/postgresql/17/bin"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pg_bindir() -> Path:
    for candidate in PG_CANDIDATES:
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    sys.exit("PostgreSQL 15+ server binaries not found (apt-get install postgresql-15).")


def ensure_redis() -> str:
    path = shutil.which("redis-server")
    if path:
        return path
    if os.geteuid() != 0:
        sys.exit("redis-server is missing: apt-get install redis-server")
    print("Installing redis-server from apt...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "redis-server"], check=True, env=env, stdout=subprocess.DEVNULL)
    return shutil.which("redis-server")


def ensure_chromium() -> None:
    """Debian's chromium and its driver, for the tests that drive a real headless browser."""
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return
    if os.geteuid() != 0:
        sys.exit("chromium is missing: apt-get install chromium chromium-driver")
    print("Installing chromium and chromium-driver from apt...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def as_postgres() -> dict:
    """Popen arguments that run a PostgreSQL program as `postgres` when we are root (signals then
    reach the server itself, not a wrapper such as runuser)."""
    if os.geteuid() == 0:
        return {"user": "postgres", "group": "postgres", "extra_groups": []}
    return {}


def wait_for_port(port: int, process: subprocess.Popen, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"{name} exited early with code {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.1)
    sys.exit(f"{name} did not start within {timeout}s")


def psql(bindir: Path, socket_dir: str, port: int, sql: str, database: str = "postgres") -> None:
    argv = [str(bindir / "psql"), "-q", "-v", "ON_ERROR_STOP=1", "-h", socket_dir, "-p", str(port)]
    subprocess.run([*argv, "-U", "postgres", "-d", database, "-c", sql], check=True, **as_postgres())


def start_postgres(workdir: Path):
    bindir = pg_bindir()
    data = workdir / "pg"
    data.mkdir()
    if os.geteuid() == 0:
        postgres_user = pwd.getpwnam("postgres")
        os.chown(workdir, postgres_user.pw_uid, postgres_user.pw_gid)
        os.chown(data, postgres_user.pw_uid, postgres_user.pw_gid)
    initdb = [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8", "--locale=C.UTF-8"]
    subprocess.run(
        [*initdb, "--auth-local=trust", "--auth-host=scram-sha-256"],
        check=True,
        stdout=subprocess.DEVNULL,
        cwd=workdir,
        **as_postgres(),
    )
    port = free_port()
    # Durability is pointless for a throwaway cluster; these make the suite faster.
    options = [
        "fsync=off",
        "synchronous_commit=off",
        "full_page_writes=off",
        "max_connections=200",
        "listen_addresses=127.0.0.1",
    ]
    process = subprocess.Popen(
        [
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(workdir),
            *[arg for option in options for arg in ("-c", option)],
        ],
        stdout=open(workdir / "postgres.log", "wb"),
        stderr=subprocess.STDOUT,
        cwd=workdir,
        **as_postgres(),
    )
    wait_for_port(port, process, "postgres")
    time.sleep(0.3)
    owner_pw, app_pw = secrets.token_hex(12), secrets.token_hex(12)
    psql(
        bindir,
        str(workdir),
        port,
        f"CREATE ROLE agentapi_owner LOGIN PASSWORD '{owner_pw}' NOSUPERUSER NOBYPASSRLS CREATEDB;"
        f"CREATE ROLE agentapi_app LOGIN PASSWORD '{app_pw}' NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;",
    )
    psql(bindir, str(workdir), port, "CREATE DATABASE agentapi OWNER agentapi_owner")
    psql(
        bindir,
        str(workdir),
        port,
        "REVOKE ALL ON SCHEMA public FROM PUBLIC; ALTER SCHEMA public OWNER TO agentapi_owner;"
        "GRANT USAGE ON SCHEMA public TO agentapi_app;",
        database="agentapi",
    )
    urls = {
        "DATABASE_URL": f"postgres://agentapi_app:{app_pw}@127.0.0.1:{port}/agentapi",
        "DATABASE_OWNER_URL": f"postgres://agentapi_owner:{owner_pw}@127.0.0.1:{port}/agentapi",
        "TEST_POSTGRES_SOCKET": f"{workdir}:{port}",
    }
    return process, urls


def start_redis(workdir: Path):
    port = free_port()
    process = subprocess.Popen(
        [
            ensure_redis(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ],
        stdout=open(workdir / "redis.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    wait_for_port(port, process, "redis-server")
    return process, {"REDIS_URL": f"redis://127.0.0.1:{port}/0"}


def stop(process: subprocess.Popen | None, sig=signal.SIGINT) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main(argv: list[str]) -> int:
    command = argv[argv.index("--") + 1 :] if "--" in argv else ["pytest"]
    workdir = Path(tempfile.mkdtemp(prefix="agentapi-test-"))
    workdir.chmod(0o755)
    postgres = redis = None
    try:
        ensure_chromium()
        postgres, pg_env = start_postgres(workdir)
        redis, redis_env = start_redis(workdir)
        env = {
            **os.environ,
            **pg_env,
            **redis_env,
            "DJANGO_SETTINGS_MODULE": "agentapi.settings.test",
            "AGENTAPI_VAR_DIR": str(workdir / "var"),
            "PYTHONPATH": str(ROOT),
        }
        python = sys.executable
        subprocess.run([python, str(ROOT / "manage.py"), "migrate", "-v", "0"], check=True, env=env, cwd=ROOT)
        return subprocess.run(command, env=env, cwd=ROOT).returncode
    except subprocess.CalledProcessError as exc:
        print(f"Setting up the test services failed: {exc}", file=sys.stderr)
        return 1
    finally:
        stop(redis, signal.SIGTERM)
        stop(postgres)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
