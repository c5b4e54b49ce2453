"""Each agent session's own directory: SESSION_WORKSPACE_ROOT/<organization id>/<session id>/.

Made (mode 0700, as are the levels above it) when the session opens, removed when it ends, by
whichever process ends it. A stdio template's `{workspace}` argument names it (mcp.stdio): such a
server runs confined to that directory, one process per session, and every web process ends those
processes once the directory is gone (mcp.pool.Pool.close_ended_workspaces).
"""

import contextlib
import logging
import os
import shutil
from pathlib import Path

from django.conf import settings

from mcp import stdio

log = logging.getLogger(__name__)


def path(session) -> Path:
    return Path(settings.SESSION_WORKSPACE_ROOT) / str(int(session.organization_id)) / str(session.pk)


def create(session) -> Path:
    directory = path(session)
    old = os.umask(0o077)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    finally:
        os.umask(old)
    directory.chmod(0o700)  # whatever the umask, and if it existed
    return directory


def remove(session) -> None:
    directory = path(session)
    shutil.rmtree(directory, ignore_errors=True)
    if directory.exists():
        log.warning("session workspace could not be removed", extra={"session": str(session.pk)})


@contextlib.contextmanager
def used_by(session):
    """Calls made inside reach stdio servers in this session's workspace."""
    with stdio.in_workspace(str(path(session))):
        yield
