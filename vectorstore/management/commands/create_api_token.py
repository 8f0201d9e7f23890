"""Issue a bearer token for the REST API's writes; the key is printed once and stored only as a hash."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from vectorstore.models import ApiToken


class Command(BaseCommand):
    help = "Create an API token for USERNAME. Writes also need the user's add/delete document permissions."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--name", default="", help="what the token is for")

    def handle(self, *args, username: str, name: str, **options):
        user = get_user_model().objects.filter(username=username).first()
        if user is None:
            raise CommandError(f"no user {username!r}")
        if not user.is_active:
            raise CommandError(f"user {username!r} is inactive")
        _, key = ApiToken.issue(user, name)
        self.stdout.write(key)
