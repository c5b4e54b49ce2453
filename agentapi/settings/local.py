"""The embedded profile: what `make run` serves. Nothing to install, everything in var/."""

from .base import *  # noqa: F403
from .base import env

DEBUG = env.bool("DEBUG", default=True)

# SQLite cannot make the audit chain's NULLS NOT DISTINCT constraint; the chain's advisory lock
# is PostgreSQL's too. The embedded profile has one writer at a time, so neither is needed there.
SILENCED_SYSTEM_CHECKS = [*SILENCED_SYSTEM_CHECKS, "models.W047"]  # noqa: F405
