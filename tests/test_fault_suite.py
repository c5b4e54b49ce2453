"""The fault suite (tests/faults/run.py, `make faults`) as part of the test run: Redis killed and
restarted, PostgreSQL restarted, a worker killed mid-run, an MCP server and an OAuth provider that
hang, each under load, on a stack of its own (its own PostgreSQL and Redis, which it kills).
About ninety seconds."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_platform_survives_its_parts_failing_under_load():
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DATABASE_URL", "DATABASE_OWNER_URL", "REDIS_URL")
    }
    result = subprocess.run([sys.executable, "tests/faults/run.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=900)  # fmt: skip
    report = (ROOT / "var" / "faults" / "report.md").read_text() if (ROOT / "var/faults/report.md").exists() else ""
    assert result.returncode == 0, (report or result.stdout[-5000:]) + result.stderr[-5000:]
    assert "No violations." in report and "Web processes restarted: no" in report
