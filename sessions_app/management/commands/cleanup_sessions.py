from django.core.management.base import BaseCommand

from sessions_app import services


class Command(BaseCommand):
    help = "Expire, once, every active agent session past its time (what the scheduled job does)."

    def handle(self, *args, **options):
        counts = services.expire_due()
        self.stdout.write(" ".join(f"{name}={count}" for name, count in counts.items()))
