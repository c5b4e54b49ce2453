# The two commands: `make run` serves the platform on embedded defaults; `make test` runs the suite
# against real PostgreSQL and Redis that it starts and stops itself.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000

.PHONY: run test lint lock bench bench-mcp bench-prompts bench-sessions bench-agents bench-console load faults clean

$(BIN)/.installed: requirements/dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements/dev.txt
	touch $@

run: $(BIN)/.installed
	$(BIN)/python scripts/run.py --port $(PORT)

test: $(BIN)/.installed
	$(BIN)/python tests/services.py -- $(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Recompile the pinned lock files from the .in files.
lock: $(BIN)/.installed
	cd requirements && ../$(BIN)/pip-compile -q --strip-extras --no-header -o base.txt base.in
	cd requirements && ../$(BIN)/pip-compile -q --strip-extras --no-header -o production.txt production.in
	cd requirements && ../$(BIN)/pip-compile -q --strip-extras --no-header -o dev.txt dev.in

bench: $(BIN)/.installed
	$(BIN)/python tests/services.py -- $(BIN)/python tests/benchmarks/bench_api.py

# A tool call through the platform against the same call made directly, production-style.
bench-mcp: $(BIN)/.installed
	$(BIN)/python tests/services.py -- $(BIN)/python tests/benchmarks/bench_mcp.py

# Composing three prompt layers with injection screening against plain string joining.
bench-prompts: $(BIN)/.installed
	$(BIN)/python tests/services.py -- $(BIN)/python tests/benchmarks/bench_prompts.py

bench-sessions: $(BIN)/.installed
	$(BIN)/python tests/services.py -- $(BIN)/python tests/benchmarks/bench_sessions.py

bench-agents: $(BIN)/.installed
	$(BIN)/python tests/services.py -- $(BIN)/python tests/benchmarks/bench_agents.py

# The console's dashboard with 100,000 audit events and 1,000 sessions, against the stock app index.
bench-console: $(BIN)/.installed
	$(BIN)/python tests/services.py -- $(BIN)/python tests/benchmarks/bench_console.py

load: $(BIN)/.installed
	$(BIN)/python tests/services.py -- $(BIN)/python tests/load/run.py

clean:
	rm -rf $(VENV) var staticfiles

# The platform under load while Redis, PostgreSQL, a worker, an MCP server and an OAuth provider
# fail; owns its PostgreSQL and Redis (it kills them). Writes var/faults/report.md.
faults: $(BIN)/.installed
	$(BIN)/python tests/faults/run.py
