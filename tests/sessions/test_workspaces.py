"""Session workspaces with a registry server over stdio: `@modelcontextprotocol/server-filesystem` from
npm (not written here) confined to each session's own directory, one process per session; the
expiry job (a real Celery worker) removes the workspace, and the process goes with it."""

import os
import shutil
import stat
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from django.utils import timezone

from mcp import pool
from mcp.models import StdioTemplate
from sessions_app import liveness
from sessions_app.models import AgentSession
from sessions_app.tasks import agent_sessions_expire
from tenants import scoping
from tests.conftest import committed, error_of
from tests.mcp.conftest import configure, npm_installed

pytestmark = committed
ROOT = Path(__file__).resolve().parents[2]
SESSIONS = "/api/v1/sessions/"
PACKAGE = "@modelcontextprotocol/server-filesystem@2026.8.31"


@pytest.fixture(scope="session")
def npm_filesystem() -> str:
    return npm_installed(PACKAGE, "@modelcontextprotocol/server-filesystem/dist/index.js")


@pytest.fixture
def files(alice_api, npm_filesystem, settings, tmp_path) -> dict:
    settings.SESSION_WORKSPACE_ROOT = str(tmp_path / "workspaces")
    settings.SESSION_WORKSPACE_CHECK_SECONDS = 0.2
    template = StdioTemplate.objects.create(
        name="filesystem", command=shutil.which("node"), arguments=[npm_filesystem, "{workspace}"], memory_limit_mb=4096
    )
    return configure(alice_api, name="files", transport="stdio", stdio_template=template.name)


def call(api, session, tool, **arguments) -> dict:
    response = api.post(f"{SESSIONS}{session['id']}/tools/call/", {"name": f"files__{tool}", "arguments": arguments})
    assert response.status_code == 200, response.content
    return response.json()


def workspace_entries() -> dict:
    _, _, running, _ = pool._runtime_for_process()
    return {entry.target.workspace: entry for entry in running.entries.values() if entry.target.workspace}


def test_each_session_has_its_own_directory_and_its_own_process(alice_api, files, acme, settings):
    first, second = (alice_api.post(SESSIONS, {"mcp_configurations": [files["id"]]}).json() for _ in range(2))
    root = Path(settings.SESSION_WORKSPACE_ROOT)
    first_dir, second_dir = (root / str(acme.pk) / session["id"] for session in (first, second))
    for directory in (first_dir, second_dir, first_dir.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    written = call(alice_api, first, "write_file", path=str(first_dir / "note.txt"), content="only mine")
    assert not written["is_error"], written
    assert (first_dir / "note.txt").read_text() == "only mine"
    # The other session's server sees its own directory only, and may not reach outside it.
    listed = call(alice_api, second, "list_directory", path=str(second_dir))
    assert "note.txt" not in str(listed["content"])
    escaped = call(alice_api, second, "read_text_file", path=str(first_dir / "note.txt"))
    assert escaped["is_error"] and "only mine" not in str(escaped["content"])
    running = workspace_entries()
    assert set(running) == {str(first_dir), str(second_dir)}
    assert running[str(first_dir)].process.pid != running[str(second_dir)].process.pid
    # Outside a session the server has no workspace to run in.
    direct = alice_api.post(
        f"/api/v1/mcp/configurations/{files['id']}/tools/call/", {"name": "list_allowed_directories"}
    )
    assert direct.status_code == 409 and error_of(direct)["code"] == "workspace_required"
    tested = alice_api.post(f"/api/v1/mcp/configurations/{files['id']}/test/")
    assert tested.status_code == 200 and tested.json()["ok"] is True, tested.content  # in a throwaway workspace


def test_the_expiry_job_removes_the_workspace_and_the_process_ends(alice_api, files, acme, settings):
    session = alice_api.post(SESSIONS, {"mcp_configurations": [files["id"]]}).json()
    directory = Path(settings.SESSION_WORKSPACE_ROOT) / str(acme.pk) / session["id"]
    call(alice_api, session, "write_file", path=str(directory / "draft.md"), content="x")
    process = workspace_entries()[str(directory)].process
    with scoping.organization_scope(acme):
        AgentSession.objects.filter(pk=session["id"]).update(expires_at=timezone.now() - timedelta(seconds=1))
    redis.Redis.from_url(settings.REDIS_URL).delete(liveness.seen_key(session["id"]))  # idle since: long ago
    env = {**os.environ, "SESSION_WORKSPACE_ROOT": settings.SESSION_WORKSPACE_ROOT}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "agentapi", "worker", "--pool=solo", "--loglevel=WARNING",
         "--without-heartbeat", "--without-gossip", "--without-mingle"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        agent_sessions_expire.delay()
        deadline = time.monotonic() + 30
        while directory.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not directory.exists()
    finally:
        worker.terminate()
        worker.wait(30)
    deadline = time.monotonic() + 20
    while process.returncode is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.returncode is not None and str(directory) not in workspace_entries()
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)


def test_closing_a_session_removes_its_workspace(alice_api, files, acme, settings):
    session = alice_api.post(SESSIONS, {"mcp_configurations": [files["id"]]}).json()
    directory = Path(settings.SESSION_WORKSPACE_ROOT) / str(acme.pk) / session["id"]
    assert directory.is_dir()
    assert alice_api.delete(f"{SESSIONS}{session['id']}/").status_code == 204
    assert not directory.exists()
