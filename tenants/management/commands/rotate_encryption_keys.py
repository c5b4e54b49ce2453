from django.core.management.base import BaseCommand, CommandError

from tenants import rotation, scoping


class Command(BaseCommand):
    help = (
        "After adding a new key at the front of FIELD_ENCRYPTION_KEYS: rewrap every organization's data "
        "key under it and reseal values written before envelope encryption. Online, batched, resumable. "
        "--check only reports (exit 1 while anything is left under a retired key)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--batch-size", type=int, default=200)
        parser.add_argument("--check", action="store_true", help="report what is left; change nothing")

    def handle(self, *args, batch_size, check, **options):
        if batch_size < 1:
            raise CommandError("--batch-size must be at least 1")
        if not check:
            done = rotation.rotate(batch_size)
            self.stdout.write(f"rewrapped {done.data_keys} data key(s), resealed {done.values} value(s)")
        with scoping.dangerously_all_organizations(reason="rotate_encryption_keys --check", record=False):
            left = rotation.remaining()
        self.stdout.write(f"left under a retired key: {left.data_keys} data key(s), {left.values} value(s)")
        if left.data_keys or left.values:
            raise CommandError("some secrets are still under a retired key; run the command again")
