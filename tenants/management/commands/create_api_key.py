from django.core.management.base import BaseCommand, CommandError

from agentapi.errors import APIError
from tenants import scoping, services
from tenants.models import Membership, Organization


class Command(BaseCommand):
    help = "Create an API key for a member of an organization. Prints the key alone on its last line, once."

    def add_arguments(self, parser):
        parser.add_argument("--organization", required=True, help="Organization slug.")
        parser.add_argument("--user", required=True, help="The member's e-mail.")
        parser.add_argument("--name", default="cli")

    def handle(self, organization, user, name, **options):
        org = Organization.objects.filter(slug=organization).first()
        if org is None:
            raise CommandError(f"No organization with slug '{organization}'.")
        with scoping.organization_scope(org):
            membership = (
                Membership.objects.select_related("user", "organization").filter(user__email=user.lower()).first()
            )
            if membership is None:
                raise CommandError(f"{user} is not a member of {organization}.")
            try:
                api_key, key = services.api_key_create(membership=membership, name=name)
            except APIError as exc:
                raise CommandError(str(exc.detail)) from None
        self.stdout.write(f"Created API key {api_key.prefix} for {membership.user.email} in {org.slug}.")
        self.stdout.write(key)
