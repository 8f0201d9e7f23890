"""Fixtures the tests share; plain helpers are in tests/helpers.py."""

from __future__ import annotations

import os

import pytest

HOST_SITE_TEST = "tests/test_host_site.py::test_the_readme_guide_works_in_a_new_site_on_a_fresh_database"


def _is_xdist_controller(config) -> bool:
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def pytest_configure(config) -> None:
    """Under xdist, name the shared venv folder before the workers start (they inherit it), and give each
    worker's torch (and its child processes') one thread: two workers on two cores, each with torch's
    one thread a core, ran four busy threads and embedded slower than one thread each."""
    if _is_xdist_controller(config):
        from tests import venvs

        venvs.share()
    if hasattr(config, "workerinput"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(session, config, items) -> None:
    """The host-site test last: its fresh venvs (minutes of pip, started at collection) are then built by
    the time a worker reaches it, instead of that worker waiting for them while the other runs alone.
    Every worker collects the same order, as xdist requires."""
    items.sort(key=lambda item: item.nodeid == HOST_SITE_TEST)


def pytest_collection_finish(session) -> None:
    """Start building the host-site test's fresh venvs now, to overlap the tests that run before it
    (without xdist; under xdist the controller builds them, once)."""
    if any(item.nodeid == HOST_SITE_TEST for item in session.items):
        from tests import venvs

        venvs.start()


def pytest_xdist_node_collection_finished(node, ids) -> None:
    """The controller: a worker collected the host-site test, so build its venvs now, once."""
    if HOST_SITE_TEST in ids:
        from tests import venvs

        venvs.start_shared()


def pytest_sessionfinish(session, exitstatus) -> None:
    from tests import venvs

    venvs.cleanup()


@pytest.fixture(autouse=True)
def _fresh_tuned_settings():
    """Each test reads the tuned search settings and vector indexes of its own database state, not a
    cached one."""
    from vectorstore.indexing import vector_indexes
    from vectorstore.search import forget_tuning

    forget_tuning()
    vector_indexes.forget()
    yield
    forget_tuning()
    vector_indexes.forget()


@pytest.fixture
def clean_env() -> dict[str, str]:
    """The environment for a child process, without the test settings module."""
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return env


@pytest.fixture
def writer_token(db, capsys) -> str:
    """A bearer token of a user who may add and delete documents (created with the command)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission
    from django.core.management import call_command

    user = get_user_model().objects.create_user("token-writer")
    user.user_permissions.add(*Permission.objects.filter(codename__in=["add_document", "delete_document"]))
    call_command("create_api_token", "token-writer")
    return capsys.readouterr().out.strip()
