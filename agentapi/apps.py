from django.apps import AppConfig


class AgentAPIConfig(AppConfig):
    name = "agentapi"
    verbose_name = "AgentAPI platform"

    def ready(self):
        from agentapi import checks  # noqa: F401  (registers the start-up checks)
