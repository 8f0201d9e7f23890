"""MkDocs hooks: the REST API's reference page, generated at build time from the OpenAPI schema that
django-ninja serves at ``/api/openapi.json`` (the same routes, so the page cannot drift from the API).

Django is set up with the site's settings; building the schema connects to no database.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent


def _schema() -> dict:
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from vectorstore.urls import api

    return api.get_openapi_schema()


def _page(schema: dict) -> str:
    info = schema.get("info", {})
    rows = []
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            summary = operation.get("summary") or operation.get("operationId", "")
            first = (operation.get("description") or "").strip().split("\n\n")[0].replace("\n", " ")
            rows.append(f"| `{method.upper()}` | `{path}` | {summary} | {first} |")
    return "\n".join(
        [
            "# REST API (OpenAPI)",
            "",
            f"{info.get('title', 'API')} {info.get('version', '')}. A running site serves the interactive",
            "documentation at `/api/docs` and the schema at `/api/openapi.json`; this page is generated from",
            "the same schema when the documentation is built ([openapi.json](openapi.json)).",
            "",
            (info.get("description") or "").strip(),
            "",
            "| method | path | summary | what it does |",
            "| --- | --- | --- | --- |",
            *rows,
            "",
        ]
    )


def on_files(files: Any, config: Any) -> Any:
    schema = _schema()
    files.append(File.generated(config, "reference/rest.md", content=_page(schema)))
    files.append(File.generated(config, "reference/openapi.json", content=json.dumps(schema, indent=1)))
    return files
