"""Helpers the tests share (fixtures live in conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
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


def unit_vectors(n: int, dims: int, seed: int = 0) -> np.ndarray:
    """n random unit vectors of float32 (what a normalizing embedder produces)."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dims)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)
