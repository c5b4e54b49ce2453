"""Real MCP servers for the MCP tests: the fastmcp server in tests/mcp/server.py over Streamable HTTP
on loopback (with and without a bearer token) and over stdio, and mcp-server-time from PyPI."""

import atexit
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from agentapi.settings.base import parse_networks
from mcp import pool
from mcp.models import StdioTemplate

SERVER = Path(__file__).with_name("server.py")
TOKEN = "test-bearer-0123456789"
PNG_BYTES = b"\x89PNG\r\n\x1a\n-test-image"


class RunningServer:
    """The test server over HTTP on a port of its own.

    Starting one is mostly Python importing fastmcp (over a second of CPU), and several fixtures
    start one per test. So once a kind (its arguments) has been started twice, the next one of
    that kind is started in the background as soon as one is taken, while the test runs: the next
    test finds it ready. Servers on a chosen port are never started ahead."""

    _ahead: dict[tuple, subprocess.Popen] = {}
    _started: set[tuple] = set()

    def __init__(self, *args):
        self.process = self._ahead.pop(args, None) or self._start(args)
        if args in self._started and "--port" not in args:
            self._ahead[args] = self._start(args)
        self._started.add(args)
        line = self.process.stdout.readline()
        assert line.startswith("PORT "), line
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}/{'sse' if '--sse' in args else 'mcp'}"

    def stats(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=5) as response:
            return json.load(response)

    def last_call(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/last-call", timeout=5) as response:
            return json.load(response)

    def handshakes(self) -> int:
        stats = self.stats()
        return stats.get("server/discover", 0) + stats.get("initialize", 0)

    def mutate(self) -> None:
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{self.port}/mutate", method="POST"), timeout=5)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(10)

    @staticmethod
    def _start(args: tuple) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, str(SERVER), "--port", "0", *args], stdout=subprocess.PIPE, text=True)

    @classmethod
    def stop_those_started_ahead(cls) -> None:
        for process in cls._ahead.values():
            process.kill()
            process.wait(10)
        cls._ahead.clear()


atexit.register(RunningServer.stop_those_started_ahead)


@pytest.fixture(scope="session")
def http_server():
    server = RunningServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def bearer_server():
    server = RunningServer("--token", TOKEN)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sse_server():
    server = RunningServer("--sse", "--token", TOKEN)
    yield server
    server.stop()


@pytest.fixture
def own_server():
    """A server of this test's own (for tests that kill it or count from zero)."""
    server = RunningServer()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def mcp_settings(settings):
    settings.OUTBOUND_ALLOWED_NETWORKS = parse_networks(["127.0.0.0/8"])
    settings.MCP_CALL_TIMEOUT = 10.0
    settings.MCP_CONNECT_TIMEOUT = 10.0
    settings.MCP_BREAKER_RESET_TIMEOUT = 30.0
    settings.MCP_CATALOGUE_TTL = 60
    yield settings
    pool.shutdown()  # every test starts from an empty pool; nothing outlives it


NPM_PACKAGE = "@modelcontextprotocol/server-everything@2026.8.31"


def npm_installed(package: str, entry: str, folder: str = "npm") -> str:
    """A package from npm (not written here), installed once into var/<folder>: its entry point."""
    import shutil

    npm = shutil.which("npm")
    assert shutil.which("node") and npm, "Node.js and npm are needed for the npm tests (apt-get install nodejs npm)"
    prefix = Path(__file__).resolve().parents[2] / "var" / folder
    path = prefix / "node_modules" / entry
    if not path.exists():
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), package],
                       check=True, capture_output=True, timeout=600)  # fmt: skip
    assert path.exists(), f"{package} has no {path}"
    return str(path)


@pytest.fixture(scope="session")
def npm_everything() -> list[str]:
    """The reference MCP server from npm: [node, its entry point, "stdio"]."""
    import shutil

    entry = npm_installed(NPM_PACKAGE, "@modelcontextprotocol/server-everything/dist/index.js")
    return [shutil.which("node"), entry, "stdio"]


@pytest.fixture
def test_template(db):
    return StdioTemplate.objects.create(
        name="test-server",
        command=sys.executable,
        arguments=[str(SERVER), "--stdio"],
        allowed_arguments=[],
        allowed_env=["GREETING"],
        memory_limit_mb=4096,
    )


@pytest.fixture
def time_template(db):
    executable = Path(sys.executable).with_name("mcp-server-time")
    return StdioTemplate.objects.create(
        name="time",
        command=str(executable),
        allowed_arguments=["--local-timezone"],
        memory_limit_mb=4096,
    )


def configure(api, **fields) -> dict:
    response = api.post("/api/v1/mcp/configurations/", {"name": fields.pop("name", "server"), **fields})
    assert response.status_code == 201, response.content
    return response.json()
