"""stdio servers: started without a shell, limited, pooled, capped per organization, closed when
idle, and never leaked (a churn of connections, with the processes counted)."""

import sys
import time
from pathlib import Path

from mcp import pool
from tests.conftest import committed, error_of
from tests.mcp.conftest import SERVER, configure

# The calls go through the data plane, which reads committed rows on its own connections.
pytestmark = committed


def stdio_processes() -> list[int]:
    """Our test server's stdio processes alive on this machine, by pid."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().split(") ")[-1].split()[0]
        except OSError:
            continue
        if str(SERVER).encode() in cmdline and b"--stdio" in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def echo(api, configuration, text="x"):
    return api.post(
        f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/", {"name": "echo", "arguments": {"text": text}}
    )


def test_a_process_runs_with_limits_and_without_a_shell(alice_api, test_template):
    configuration = configure(alice_api, transport="stdio", stdio_template="test-server")
    pid = int(
        alice_api.post(f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/", {"name": "pid"}).json()[
            "content"
        ][0]["text"]
    )
    limits = Path(f"/proc/{pid}/limits").read_text()
    # Memory is capped as data (RLIMIT_DATA), not address space, which V8, Go and the JVM reserve
    # far beyond what they use.
    assert f"Max data size             {4096 * 1024 * 1024}" in limits
    assert "Max address space         unlimited" in limits
    assert "Max open files            256                  256" in limits
    assert "Max cpu time              3600                 3600" in limits
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert cmdline[1].endswith(b"server.py") and b"sh" not in Path(cmdline[0].decode()).name.encode()


def test_churning_connections_leaks_no_process(alice_api, test_template, settings):
    settings.MCP_STDIO_MAX_PROCESSES_PER_ORGANIZATION = 2
    before = set(stdio_processes())
    configurations = [
        configure(alice_api, name=f"stdio {i}", transport="stdio", stdio_template="test-server") for i in range(5)
    ]
    for round_ in range(2):
        for configuration in configurations:
            assert echo(alice_api, configuration, f"{round_}").status_code == 200
            assert len(set(stdio_processes()) - before) <= 2  # the organization's cap, idle ones closed first
    # A changed configuration replaces its process.
    alice_api.patch(
        f"/api/v1/mcp/configurations/{configurations[0]['id']}/", {"stdio_arguments": {"env": {"GREETING": "new"}}}
    )
    assert echo(alice_api, configurations[0]).status_code == 200
    assert len(set(stdio_processes()) - before) <= 2
    pool.shutdown()
    assert wait_for(lambda: not set(stdio_processes()) - before)


def test_idle_processes_are_closed(alice_api, test_template, settings):
    settings.MCP_POOL_IDLE_SECONDS = 1.0
    before = set(stdio_processes())
    configuration = configure(alice_api, transport="stdio", stdio_template="test-server")
    assert echo(alice_api, configuration).status_code == 200
    assert set(stdio_processes()) - before
    assert wait_for(lambda: not set(stdio_processes()) - before, timeout=10)
    assert echo(alice_api, configuration).status_code == 200  # and started again when needed


def test_when_every_process_is_busy_the_organization_waits(alice_api, test_template, settings, acme):
    import threading

    from mcp.credentials import target_for
    from mcp.models import MCPConfiguration
    from tenants import scoping

    settings.MCP_STDIO_MAX_PROCESSES_PER_ORGANIZATION = 1
    busy = configure(alice_api, name="busy", transport="stdio", stdio_template="test-server")
    other = configure(alice_api, name="other", transport="stdio", stdio_template="test-server")
    with scoping.organization_scope(acme):
        target = target_for(MCPConfiguration.objects.get(pk=busy["id"]))

    async def slow(client):
        return await client.call_tool("slow", {"seconds": 2})

    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(pool.call(target, slow, reads=False)))
    thread.start()
    time.sleep(1.0)
    response = echo(alice_api, other)
    assert response.status_code == 503 and error_of(response)["code"] == "upstream_busy"
    thread.join(10)
    assert outcome[0]["content"][0]["text"] == "slept 2.0"
    assert echo(alice_api, other).status_code == 200  # the idle one made room


def test_a_missing_command_is_a_clear_error(alice_api, test_template):
    test_template.command = "/nonexistent/mcp-server"
    test_template.save()
    configuration = configure(alice_api, transport="stdio", stdio_template="test-server")
    response = echo(alice_api, configuration)
    assert response.status_code == 502 and "not installed" in error_of(response)["message"]


def test_a_process_that_exits_at_start_is_reported_at_once_with_its_status_and_stderr(alice_api, caplog):
    from mcp.models import StdioTemplate

    StdioTemplate.objects.create(
        name="exits",
        command=sys.executable,
        arguments=["-c", EXITS_AT_START],
        memory_limit_mb=1024,
    )
    configuration = configure(alice_api, transport="stdio", stdio_template="exits")
    started = time.monotonic()
    response = echo(alice_api, configuration)
    elapsed = time.monotonic() - started
    assert elapsed < 2, elapsed
    assert response.status_code == 502, response.content
    error = error_of(response)
    assert error["code"] == "upstream_exited"
    assert "exited with exit status 3" in error["message"] and "fatal: no configuration file" in error["message"]
    assert "hunter2" not in response.content.decode() and "s3cr3t" not in response.content.decode()
    assert "Future exception was never retrieved" not in caplog.text


EXITS_AT_START = (
    "import sys; sys.stderr.write('starting up\\nAPI_TOKEN=hunter2\\nAuthorization: Bearer s3cr3t\\n"
    "fatal: no configuration file\\n'); sys.exit(3)"
)


def test_a_node_server_from_npm_runs_under_the_default_limits(alice_api, npm_everything):
    from mcp.models import StdioTemplate

    StdioTemplate.objects.create(name="everything", command=npm_everything[0], arguments=npm_everything[1:])
    assert StdioTemplate.objects.get(name="everything").memory_limit_mb == 1024  # the default
    configuration = configure(alice_api, transport="stdio", stdio_template="everything")
    response = alice_api.post(
        f"/api/v1/mcp/configurations/{configuration['id']}/tools/call/",
        {"name": "echo", "arguments": {"message": "from node"}},
    )
    assert response.status_code == 200, response.content
    assert "from node" in response.json()["content"][0]["text"]
