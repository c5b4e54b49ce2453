from django.core.management.base import BaseCommand

from oauth import services


class Command(BaseCommand):
    help = "Refresh, once, every OAuth token expiring within the window (what the scheduled job does)."

    def add_arguments(self, parser):
        parser.add_argument("--window", type=int, default=None, help="seconds (default OAUTH_REFRESH_WINDOW_SECONDS)")

    def handle(self, *args, window, **options):
        counts = services.refresh_expiring(window)
        self.stdout.write(" ".join(f"{name}={count}" for name, count in counts.items()))
