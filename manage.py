#!/usr/bin/env python3
"""Django's command-line utility for administrative tasks.

Run as `./manage.py ...` from a checkout set up by `make run` or `make test`: when the Python that
runs it has no Django, it runs itself again with the checkout's own virtual environment (.venv),
so the command works without activating it.
"""

import os
import sys
from pathlib import Path


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "agentapi.settings.local")
    try:
        from django.core.management import execute_from_command_line
    except ImportError:
        venv = Path(__file__).resolve().parent / ".venv"
        venv_python = venv / "bin" / "python"
        if venv_python.exists() and Path(sys.prefix).resolve() != venv.resolve():
            os.execv(str(venv_python), [str(venv_python), __file__, *sys.argv[1:]])  # noqa: S606 (our venv)
        sys.exit("Django is not installed for this Python: run `make run` once (it creates .venv), then ./manage.py.")
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
