"""Settings of the app's tests: the vectorstore app alone (with a test-only app that hosts its own
document model), not the demo site's. Only the database comes from the same place as the site's:
``DATABASE_URL``, else the embedded PostgreSQL (project/db.py)."""

from pathlib import Path

from project.db import database_config

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "vectorstore-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "ninja",
    "vectorstore",
    "tests.testapp",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "tests.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
DATABASES = {"default": database_config()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
# Fast logins in tests; PBKDF2 (Django's default) checks passwords the site's own commands set.
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.MD5PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
# POST /api/documents takes up to 1,000 documents: a site that uses it raises Django's 2.5 MB default.
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

VECTORSTORE = {
    "DIMENSIONS": 384,
    "STREAM_SOURCE": BASE_DIR / "fixtures" / "sotu.parquet",
    # Off but where a test turns it on: a re-tune in a thread of its own would hold a connection to the
    # test database across tests.
    "AUTO_TUNE": False,
}
