"""Settings for the site around the vectorstore app.

Production-safe by default (DEBUG off); ``DJANGO_DEBUG=1`` for development.
``DJANGO_SECRET_KEY`` and ``DJANGO_ALLOWED_HOSTS`` come from the environment;
without a key, one is generated once per checkout into ``.secret_key``.
"""

import json
import os
from pathlib import Path

from django.core.management.utils import get_random_secret_key

from project.db import database_config, replica_configs

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def _local_secret_key(path: Path = BASE_DIR / ".secret_key") -> str:
    """A random key kept in a git-ignored file, so sessions survive restarts without a shared default."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        key = get_random_secret_key()
        f.write(key)
    return key


DEBUG = _env_bool("DJANGO_DEBUG")
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or _local_secret_key()
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h]
CSRF_TRUSTED_ORIGINS = [o for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o]

# Behind a TLS-terminating proxy in production: DJANGO_SECURE=1 turns on what
# `manage.py check --deploy` asks for. Off by default, since `make run` serves
# plain HTTP on 127.0.0.1.
if _env_bool("DJANGO_SECURE"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", "31536000"))
    # HSTS for subdomains and the preload list are on, as check --deploy asks; set these to 0
    # where a subdomain must stay on plain HTTP (HSTS cannot be taken back from browsers quickly).
    SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = _env_bool("DJANGO_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    # ninja as an app serves /api/docs' Swagger UI from our own static files, not from a CDN.
    "ninja",
    "vectorstore",
    "project",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# Under ASGI (project/asgi.py says so) WhiteNoise's middleware, which is sync only, would send every
# request through a thread and back (measured: a fifth of the worker's time); there the ASGI entry
# point serves the static files itself.
if os.environ.get("VECTORSTORE_SERVED_BY") == "asgi":
    MIDDLEWARE.remove("whitenoise.middleware.WhiteNoiseMiddleware")

ROOT_URLCONF = "project.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

WSGI_APPLICATION = "project.wsgi.application"
ASGI_APPLICATION = "project.asgi.application"

DATABASES = {"default": database_config()}
# Streaming replicas of it, for reads (README "Read replicas"): DATABASE_REPLICA_URLS, comma-separated.
REPLICAS = replica_configs()
if REPLICAS:
    DATABASES.update(REPLICAS)
    DATABASE_ROUTERS = ["vectorstore.replicas.routers.ReplicaRouter"]
    MIDDLEWARE.append("vectorstore.replicas.routers.ReplicaMiddleware")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Request bodies over this are refused (400) before they are read or parsed. 10 MiB fits
# POST /api/documents' 1,000 documents of a few KB each; VECTORSTORE_MAX_BODY sets it.
DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("VECTORSTORE_MAX_BODY", str(10 * 1024 * 1024)))

STATIC_URL = "static/"
# WhiteNoise serves the admin's static files from the apps themselves, so the
# production server needs no collectstatic step and no separate web server.
WHITENOISE_USE_FINDERS = True

# The vectorstore app's settings; every key is optional (see vectorstore/conf.py).
VECTORSTORE = {
    # The embedding model (a sentence-transformers name or local path; unset: the bundled all-MiniLM-L6-v2)
    # and its vectors' size. Changing them: docs/changing-models.md (manage.py reembed).
    "MODEL": os.environ.get("VECTORSTORE_MODEL") or None,
    "DIMENSIONS": int(os.environ.get("VECTORSTORE_DIMENSIONS", "384")),
    # Search and similar answered outside Django's request cycle (project/wsgi.py; docs/search/serving.md).
    "LEAN_READS": os.environ.get("VECTORSTORE_LEAN_READS", "1") != "0",
    "DEVICE": os.environ.get("VECTORSTORE_DEVICE", "auto"),
    # Metadata keys with a type, whose range filters get a B-tree index: '{"year": "int"}'.
    "METADATA_KEYS": json.loads(os.environ.get("VECTORSTORE_METADATA_KEYS") or "{}"),
    # statement_timeout of every search (ms): past it a search is a 503 with Retry-After.
    "SEARCH_TIMEOUT_MS": int(os.environ.get("VECTORSTORE_SEARCH_TIMEOUT_MS", "5000")),
    # What `manage.py stream_sim` replays when given no --source.
    "STREAM_SOURCE": BASE_DIR / "fixtures" / "sotu.parquet",
    "REPLICAS": list(REPLICAS),
    # Seconds of replay lag past which a replica takes no reads.
    "REPLICA_MAX_LAG": float(os.environ.get("VECTORSTORE_REPLICA_MAX_LAG", "5")),
    # Seconds a replica that failed or lagged takes no reads before it is asked again.
    "REPLICA_SKIP_SECONDS": float(os.environ.get("VECTORSTORE_REPLICA_SKIP_SECONDS", "5")),
    # Long texts kept as passages too (README, "Long documents: passages"): VECTORSTORE_PASSAGES=1.
    "PASSAGES": os.environ.get("VECTORSTORE_PASSAGES", "0") == "1",
}
