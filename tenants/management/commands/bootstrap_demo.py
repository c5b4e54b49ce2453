"""Make the demo organization, its admin and an API key, once. `make run` calls it every time."""

import secrets

from django.core.management.base import BaseCommand
from django.db import transaction

from tenants import scoping, services
from tenants.models import Membership, Organization, User

SLUG, EMAIL = "demo", "admin@demo.local"


class Command(BaseCommand):
    help = "Create the demo organization with an admin user and an API key (printed once)."

    def add_arguments(self, parser):
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")

    @transaction.atomic
    def handle(self, base_url, **options):
        if Organization.objects.filter(slug=SLUG).exists():
            self.stdout.write(
                f"Demo organization '{SLUG}' exists; its admin is {EMAIL}. Its first API key and password "
                "were printed when it was made. New key: ./manage.py create_api_key --organization demo --user "
                f"{EMAIL}"
            )
            return
        organization = services.organization_create(slug=SLUG, name="Demo organization")
        password = secrets.token_urlsafe(12)
        user = User.objects.filter(email=EMAIL).first() or User.objects.create_superuser(EMAIL, password)
        with scoping.organization_scope(organization):
            membership = Membership.objects.create(organization=organization, user=user, role="owner")
            services.record_change("tenants.membership.create", target=membership, details={"role": "owner"})
            api_key, key = services.api_key_create(membership=membership, name="demo")
        self.stdout.write(
            "\nDemo organization created. Shown this once, keep them:\n"
            f"  admin:    {base_url}/admin/  {EMAIL} / {password}\n"
            f"  API key:  {key}\n"
            f"  try:      curl -H 'Authorization: Bearer {key}' {base_url}/api/v1/me/\n"
        )
