from django.core.management.base import BaseCommand, CommandError

from agentapi.errors import APIError
from tenants import services


class Command(BaseCommand):
    help = "Create an organization."

    def add_arguments(self, parser):
        parser.add_argument("slug")
        parser.add_argument("--name", required=True)

    def handle(self, slug, name, **options):
        try:
            organization = services.organization_create(slug=slug, name=name)
        except APIError as exc:
            raise CommandError(str(exc.detail)) from None
        self.stdout.write(f"Created organization {organization.slug} (id {organization.pk}).")
