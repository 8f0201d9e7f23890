"""Fresh virtual environments with the checkout pip-installed, for the host-site test: one with the
API only, one with ``[embed]``. Building them (about a minute of pip) starts in a background thread as
soon as the session has collected that test, so that it overlaps the tests before it; the test waits
for the result (``ready()``), which is the build's own outcome, never a guess at its duration.

Under pytest-xdist the controller process builds them once (``start_shared``), in a folder it names in
``VECTORSTORE_TEST_VENVS`` before the workers start; the worker that runs the test waits for the build's
own result file there (``RESULT``: "ok", or the error), so the build is neither repeated per worker nor
held by one worker's other tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import ROOT

# What the package is built from: a copy, so that building leaves nothing in the checkout.
PACKAGE_FILES = ("pyproject.toml", "README.md", "LICENSE", "vectorstore")
WARM_UP = (
    "from django.conf import settings\nsettings.configure()\n"
    "import django.contrib.admin, django.contrib.postgres.search, django.db.models, django.test,"
    " ninja, numpy, psycopg, pgvector.django\n"
)
EMBED_WARM_UP = "import pyarrow.parquet, sentence_transformers, torch, tqdm, transformers\n"
SHARED = "VECTORSTORE_TEST_VENVS"  # the shared build's folder, set by the xdist controller
RESULT = "result.txt"
TIMEOUT = 1800


@dataclass(frozen=True)
class Venvs:
    source: Path  # the copy of the checkout that was installed
    bare: Path  # vectorstore alone: no torch, no sentence-transformers
    embed: Path  # vectorstore[embed], with the CPU build of torch


_executor: ThreadPoolExecutor | None = None
_future: Future | None = None
_root: Path | None = None


def _run(*args: str, env: dict[str, str] | None = None) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=900, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {result.stdout}{result.stderr}")


def _package_source(dest: Path) -> Path:
    dest.mkdir()
    for name in PACKAGE_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    return dest


def _paths(root: Path) -> Venvs:
    return Venvs(root / "src", root / "bare", root / "embed")


def _build(root: Path) -> Venvs:
    built = _paths(root)
    _package_source(built.source)
    for venv in (built.bare, built.embed):
        _run(sys.executable, "-m", "venv", str(venv))
    # --no-compile: byte-compiling the model stack costs more than the rest of the install.
    pip = ("-m", "pip", "install", "--quiet", "--no-compile")
    _run(str(built.bare / "bin" / "python"), *pip, str(built.source))
    # torch first, pinned: the CPU build on this disk (the README's CPU index gives the same); an
    # unpinned torch, asked for by sentence-transformers, would be a CUDA build of several GB.
    _run(str(built.embed / "bin" / "python"), *pip, "torch==2.13.0")
    _run(str(built.embed / "bin" / "python"), *pip, f"{built.source}[embed]")
    # The modules the test's processes import, byte-compiled here (in the background) by importing them
    # once; pip's own --compile would compile every file of the model stack. Where the environment says
    # PYTHONDONTWRITEBYTECODE (as this one may), no process would write them, and every one of the test's
    # processes would compile torch's and transformers' sources again (4 s each, measured).
    writes = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    _run(str(built.bare / "bin" / "python"), "-c", WARM_UP, env=writes)
    _run(str(built.embed / "bin" / "python"), "-c", WARM_UP + EMBED_WARM_UP, env=writes)
    return built


def _build_and_record(root: Path) -> Venvs:
    """Build, then write the outcome where a worker process waits for it."""
    try:
        built = _build(root)
    except BaseException as exc:
        (root / RESULT).write_text(f"failed: {exc}")
        raise
    (root / RESULT).write_text("ok")
    return built


def _submit(root: Path) -> None:
    global _executor, _future, _root
    _root = root
    _executor = ThreadPoolExecutor(1, thread_name_prefix="venvs")
    _future = _executor.submit(_build_and_record, root)


def share() -> None:
    """In the xdist controller, before the workers start: name the folder the build will use."""
    if SHARED not in os.environ:
        os.environ[SHARED] = tempfile.mkdtemp(prefix="vectorstore-venvs-")


def start_shared() -> None:
    """In the xdist controller, once a worker has collected the test: build into the shared folder."""
    if _future is None:
        _submit(Path(os.environ[SHARED]))


def start() -> None:
    """Begin building (once per session), from the checkout as it is now; a worker leaves it to the
    controller."""
    if _future is None and SHARED not in os.environ:
        _submit(Path(tempfile.mkdtemp(prefix="vectorstore-venvs-")))


def ready() -> Venvs:
    """The built environments; raises what the build raised. A worker waits for the controller's result
    file, which the build writes when it ends (succeeded or not)."""
    if SHARED in os.environ and _future is None:
        root = Path(os.environ[SHARED])
        deadline = time.monotonic() + TIMEOUT
        while not (root / RESULT).exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the shared venv build in {root} gave no result in {TIMEOUT} s")
            time.sleep(0.5)
        outcome = (root / RESULT).read_text()
        if outcome != "ok":
            raise RuntimeError(f"the shared venv build failed: {outcome}")
        return _paths(root)
    start()
    assert _future is not None
    return _future.result(timeout=TIMEOUT)


def cleanup() -> None:
    """Stop waiting for a build and delete what it made (the controller's own, or this process's)."""
    if _future is not None:
        _future.cancel()
        _executor.shutdown(wait=False, cancel_futures=True)
    if _root is not None:
        shutil.rmtree(_root, ignore_errors=True)
