"""Create the site's admin login once, and print how to log in."""

import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Create a superuser if none of that name exists, and print its login."

    def add_arguments(self, parser):
        parser.add_argument("--username", default=os.environ.get("VECTORSTORE_ADMIN_USER", "admin"))

    def handle(self, *args, username: str, **options):
        password = os.environ.get("VECTORSTORE_ADMIN_PASSWORD") or self._stored_password()
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            User.objects.create_superuser(username=username, email="", password=password)
            self.stdout.write(f"Created the admin login: {username} / {password}")
        elif user.check_password(password):
            self.stdout.write(f"Admin login: {username} / {password}")
        else:
            self.stdout.write(f"Admin login: {username} (its password was changed since; use yours)")

    def _stored_password(self) -> str:
        # Kept in a git-ignored file so that every `make run` prints the same login.
        path = settings.BASE_DIR / ".admin_password"
        if path.exists():
            return path.read_text().strip()
        password = secrets.token_urlsafe(12)
        path.write_text(password)
        path.chmod(0o600)
        return password
