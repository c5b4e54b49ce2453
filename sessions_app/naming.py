"""The names a session gives its servers' tools and prompts: `<server>__<tool>`.

What the names must be: only `[A-Za-z0-9_-]` and at most 64 characters (the limit OpenAI,
Anthropic and Bedrock enforce on tool names), unique in the session, and stable: attaching another
server, or a server listing another tool, never renames a tool an agent already knows.

How. Each attached server gets a prefix when it is attached (SessionServer.prefix), made from its
name and kept: a later server whose name cleans to the same prefix gets `_2`, `_3`. A prefix never
contains `__` nor starts or ends with `_`, so the first `__` of a session name always ends the
prefix. A tool whose name is already clean and short enough keeps it (`github__create_issue`);
any other is cleaned, cut to fit and given the first characters of the SHA-256 of its upstream
name, which depends on nothing but that name (`files__read_file_v2_1a2b3c4d` for `read.file/v2`).
"""

import hashlib
import re

MAX_NAME = 64
MAX_PREFIX = 24
SEPARATOR = "__"
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_-]+")
_UNDERSCORES = re.compile(r"_{2,}")
_DIGEST = 8


def _clean(text: str) -> str:
    return _NOT_ALLOWED.sub("_", text)


def prefix_for(server_name: str, taken: set[str]) -> str:
    """A prefix for a newly attached server, not one of `taken`."""
    base = _UNDERSCORES.sub("_", _clean(server_name)).strip("_")[:MAX_PREFIX].strip("_") or "server"
    candidate, number = base, 2
    while candidate in taken:
        suffix = f"_{number}"
        candidate = base[: MAX_PREFIX - len(suffix)].rstrip("_") + suffix
        number += 1
    return candidate


def _digest(name: str, length: int = _DIGEST) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:length]


def session_name(prefix: str, name: str, *, digest: int = 0) -> str:
    """The session's name for a server's tool (or prompt) `name`. `digest` forces a hash of that
    many characters (what `assign` uses if two names ever meet)."""
    clean = _clean(name)
    plain = f"{prefix}{SEPARATOR}{clean}"
    if not digest and clean == name and name and len(plain) <= MAX_NAME:
        return plain
    length = digest or _DIGEST
    room = MAX_NAME - len(prefix) - len(SEPARATOR) - length - 1
    return f"{prefix}{SEPARATOR}{clean[:room]}_{_digest(name, length)}"


def assign(prefix: str, names: list[str], taken: set[str] | None = None) -> dict[str, str]:
    """Session names for one server's `names` (upstream name -> session name), unique among
    themselves and `taken`. A clash (a clean name that happens to equal another's hashed form) is
    settled by a longer hash for the hashed one, so the clean name, the one an agent would have
    guessed, keeps its form."""
    taken = set(taken or ())
    assigned: dict[str, str] = {}
    # The clean names first: they never change form.
    for name in sorted(names, key=lambda n: session_name(prefix, n) != f"{prefix}{SEPARATOR}{n}"):
        candidate = session_name(prefix, name)
        length = _DIGEST
        while candidate in taken and length < 32:
            length += 4
            candidate = session_name(prefix, name, digest=length)
        assigned[name] = candidate
        taken.add(candidate)
    return assigned


_LOOKS_HASHED = re.compile(r"_[0-9a-f]{8,32}$")


def plain_upstream(prefix: str, rest: str) -> str | None:
    """The server's own name for the session name `<prefix>__<rest>` when that can be told from
    the name alone: a clean name that is not in a hashed form. None: look it up in the catalogue."""
    if _LOOKS_HASHED.search(rest) or session_name(prefix, rest) != f"{prefix}{SEPARATOR}{rest}":
        return None
    return rest


def split(session_name_: str) -> tuple[str, str] | None:
    """(prefix, rest) of a session name, or None when it has no prefix."""
    prefix, separator, rest = session_name_.partition(SEPARATOR)
    return (prefix, rest) if separator and prefix and rest else None
