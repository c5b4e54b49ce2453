"""The embedded profile: what `make run` serves. Nothing to install, everything in var/."""

from .base import *  # noqa: F403
from .base import env

DEBUG = env.bool("DEBUG", default=True)
