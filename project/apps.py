from django.apps import AppConfig


class ProjectConfig(AppConfig):
    """The site itself, as an app only so that it can carry its own management commands."""

    name = "project"
    label = "site"
    verbose_name = "Site"
