"""stdio MCP servers: what a template and a tenant's arguments may contain, and the command line.

A tenant never chooses a command line. An operator's StdioTemplate fixes the command, its leading
arguments and fixed environment; a tenant fills in only the options and variables the template
names. Variables that make an interpreter or the dynamic linker load code are refused everywhere,
templates included. The process starts without a shell, through prlimit (util-linux) so that its
memory (data), CPU time and open files are capped from its first instruction, with an environment built
from nothing but a minimal PATH/HOME and what the template and tenant set, in a working directory
of its own.
"""

import contextlib
import os
import re
import shutil
from contextvars import ContextVar

from agentapi.errors import APIError

# A template's arguments may name the calling agent session's workspace (sessions_app.workspaces):
# the server then runs confined to that directory, one process per session.
WORKSPACE = "{workspace}"
# A template whose arguments name a port starts a terminal agent behind coder/agentapi, per agent
# session (sessions_app.terminals), not an MCP server; its fixed environment may hand the agent
# backend's sealed key to the process: a variable whose value is `{api_key}`.
PORT = "{port}"
API_KEY = "{api_key}"
_workspace: ContextVar[str | None] = ContextVar("agentapi_stdio_workspace", default=None)


@contextlib.contextmanager
def in_workspace(path: str | None):
    """Calls made inside reach stdio servers as this session's (mcp.credentials.target_for)."""
    token = _workspace.set(path)
    try:
        yield
    finally:
        _workspace.reset(token)


def current_workspace() -> str | None:
    return _workspace.get()


def uses_workspace(template) -> bool:
    return any(WORKSPACE in str(argument) for argument in template.arguments)


def starts_terminal_agent(template) -> bool:
    return any(PORT in str(argument) for argument in template.arguments)


# Exact names and prefixes of variables that inject code into a process or its interpreter.
DENIED_ENV = {
    "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "LD_DEBUG", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME",
    "PYTHONINSPECT", "PYTHONUSERBASE", "PYTHONEXECUTABLE", "PYTHONWARNINGS", "PYTHONBREAKPOINT",
    "NODE_OPTIONS", "NODE_PATH", "NODE_REPL_EXTERNAL_MODULE", "PERL5OPT", "PERL5LIB", "PERLLIB",
    "RUBYOPT", "RUBYLIB", "JAVA_TOOL_OPTIONS", "_JAVA_OPTIONS", "JDK_JAVA_OPTIONS", "CLASSPATH",
    "BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "PS4", "PROMPT_COMMAND", "IFS", "GCONV_PATH",
    "MALLOC_CHECK_", "GLIBC_TUNABLES", "PATH", "HOME", "DOTNET_STARTUP_HOOKS", "GIT_SSH_COMMAND",
    "GIT_EXEC_PATH", "GIT_CONFIG_GLOBAL", "UV_PYTHON", "NPM_CONFIG_NODE_OPTIONS",
}  # fmt: skip
DENIED_ENV_PREFIXES = ("LD_", "DYLD_", "PYTHON", "NODE_", "BASH_FUNC_", "GIT_CONFIG_", "NPM_CONFIG_")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}$")
_OPTION = re.compile(r"^--?[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_MAX_VALUE = 1000
BASE_PATH = "/usr/local/bin:/usr/bin:/bin"


def env_name_denied(name: str) -> bool:
    upper = name.upper()
    return upper in DENIED_ENV or upper.startswith(DENIED_ENV_PREFIXES)


def _value_problem(value) -> str | None:
    if not isinstance(value, str):
        return "must be a string"
    if len(value) > _MAX_VALUE:
        return f"must be at most {_MAX_VALUE} characters"
    if "\x00" in value or "\n" in value or "\r" in value:
        return "must not contain NUL or line breaks"
    return None


def template_problems(*, command, arguments, allowed_arguments, allowed_env, env) -> dict:
    """What is wrong with an operator's template, by field (empty when nothing is)."""
    problems = {}
    if not isinstance(command, str) or not command or _value_problem(command) or command.startswith("-"):
        problems["command"] = ["Give the executable as a path or a name on PATH."]
    if not isinstance(arguments, list) or any(_value_problem(a) for a in arguments):
        problems["arguments"] = ["A list of strings without NUL or line breaks."]
    if not isinstance(allowed_arguments, list) or not all(
        isinstance(o, str) and _OPTION.match(o) for o in allowed_arguments
    ):
        problems["allowed_arguments"] = ["A list of option names such as --timezone."]
    if not isinstance(allowed_env, list) or not all(isinstance(n, str) and _ENV_NAME.match(n) for n in allowed_env):
        problems["allowed_env"] = ["A list of upper-case variable names."]
    elif denied := sorted(n for n in allowed_env if env_name_denied(n)):
        problems["allowed_env"] = [f"These variables can inject code and are never allowed: {', '.join(denied)}."]
    if not isinstance(env, dict) or not all(isinstance(k, str) and _ENV_NAME.match(k) for k in env):
        problems["env"] = ["An object of upper-case variable names to string values."]
    elif denied := sorted(n for n in env if env_name_denied(n)):
        problems["env"] = [f"These variables can inject code and are never allowed: {', '.join(denied)}."]
    elif any(_value_problem(v) for v in env.values()):
        problems["env"] = ["Values must be strings without NUL or line breaks."]
    return problems


def validate_arguments(template, stdio_arguments) -> dict:
    """The tenant's `{"arguments": {option: value}, "env": {NAME: value}}`, checked against the
    template. Raises APIError (400) naming what is not allowed."""
    if not isinstance(stdio_arguments, dict) or set(stdio_arguments) - {"arguments", "env"}:
        raise _invalid('An object with "arguments" (option to value) and "env" (variable to value).')
    arguments = stdio_arguments.get("arguments") or {}
    env = stdio_arguments.get("env") or {}
    if not isinstance(arguments, dict) or not isinstance(env, dict):
        raise _invalid('"arguments" and "env" are objects.')
    for option, value in arguments.items():
        if option not in template.allowed_arguments:
            raise _invalid(f"The template does not let you set {option!r}; allowed: {template.allowed_arguments}.")
        if problem := _value_problem(value):
            raise _invalid(f"The value of {option!r} {problem}.")
    for name, value in env.items():
        if env_name_denied(name):
            raise _invalid(f"{name!r} can inject code into the server process and is never allowed.")
        if name not in template.allowed_env:
            raise _invalid(f"The template does not let you set {name!r}; allowed: {template.allowed_env}.")
        if problem := _value_problem(value):
            raise _invalid(f"The value of {name!r} {problem}.")
    return {"arguments": dict(arguments), "env": dict(env)}


def _invalid(message: str) -> APIError:
    return APIError("invalid", message, status=400, details={"stdio_arguments": [message]})


def command_line(
    template, stdio_arguments: dict, workspace: str | None = None, *, port: int | None = None, api_key: str = ""
) -> tuple[str, list[str], dict]:
    """(executable, argv after it, environment) for a process started without a shell.
    `{workspace}` in the template's arguments becomes `workspace` (a session's directory), `{port}`
    the port a terminal agent serves on; a fixed variable whose value is `{api_key}` gets `api_key`
    (never an argument: a command line is visible to every process on the host)."""
    command = shutil.which(template.command, path=BASE_PATH) if "/" not in template.command else template.command
    if command is None or not os.access(command, os.X_OK):
        raise FileNotFoundError(f"stdio template {template.name}: command not found")
    if uses_workspace(template) and workspace is None:
        raise APIError(
            "workspace_required",
            "This server runs in an agent session's workspace: use it through a session's tools.",
            status=409,
        )
    argv = [str(a).replace(WORKSPACE, workspace) if workspace else str(a) for a in template.arguments]
    if port is not None:
        argv = [argument.replace(PORT, str(port)) for argument in argv]
    for option, value in (stdio_arguments.get("arguments") or {}).items():
        argv += [option, value]
    # Memory is capped as data (RLIMIT_DATA: heap and private writable mappings), not as address
    # space (--as): V8, Go and the JVM reserve far more address space than they use, and die at
    # start under an address-space cap that would fit their real use many times over.
    limits = [
        f"--data={template.memory_limit_mb * 1024 * 1024}",
        f"--cpu={template.cpu_limit_seconds}",
        f"--nofile={template.open_files_limit}",
    ]
    prlimit = shutil.which("prlimit", path=BASE_PATH) or "/usr/bin/prlimit"
    fixed = {name: api_key if value == API_KEY else value for name, value in template.env.items()}
    env = {**fixed, **(stdio_arguments.get("env") or {})}
    return prlimit, [*limits, "--", command, *argv], env


# A line's secret-looking values: "TOKEN=...", "password: ...", "Authorization: Bearer ...".
_SECRET_VALUE = re.compile(
    r"(?i)((?:pass(?:word)?|secret|token|api[_-]?key|authorization|credential|private[_-]?key|bearer)"
    r"[\w-]*[\"']?\s*[:=]\s*[\"']?)(?:bearer\s+|basic\s+)?[^\s,;\"']+"
)
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}")


def redact(line: str) -> str:
    """The line with the values of anything that looks like a credential replaced."""
    return _BEARER.sub(r"\1 [redacted]", _SECRET_VALUE.sub(r"\1[redacted]", line))


def stderr_tail(path: str, lines: int = 5, limit: int = 1000) -> str:
    """The last lines a process wrote to its stderr file, secrets redacted, at most `limit` characters."""
    try:
        with open(path, "rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 16384))
            text = file.read().decode("utf-8", "replace")
    except OSError:
        return ""
    tail = [redact(line.strip()) for line in text.splitlines() if line.strip()][-lines:]
    return " | ".join(tail)[-limit:]
