from django.core.management.base import BaseCommand, CommandError

from agentapi.errors import APIError
from tenants import scoping, services
from tenants.models import Organization, Role


class Command(BaseCommand):
    help = "Create a user (or reuse one with that e-mail) and make them a member of an organization."

    def add_arguments(self, parser):
        parser.add_argument("email")
        parser.add_argument("--organization", required=True, help="Organization slug.")
        parser.add_argument("--role", required=True, choices=Role.values)
        parser.add_argument("--name", default="")

    def handle(self, email, organization, role, name, **options):
        org = Organization.objects.filter(slug=organization).first()
        if org is None:
            raise CommandError(f"No organization with slug '{organization}'.")
        with scoping.organization_scope(org):
            try:
                membership = services.membership_create(organization=org, email=email, role=role, name=name)
            except APIError as exc:
                raise CommandError(str(exc.detail)) from None
        self.stdout.write(f"{membership.user.email} is now {role} of {org.slug}.")
