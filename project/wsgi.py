"""WSGI entry point, served by gunicorn (``make run``): the site, its API's search and similar answered
outside Django's request cycle (``vectorstore.api.lean``; every other request is Django's)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_application = get_wsgi_application()

from vectorstore.api.lean import lean_reads  # noqa: E402 (after Django is set up)

application = lean_reads(django_application)
