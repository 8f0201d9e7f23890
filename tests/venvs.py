"""Fresh virtual environments with the checkout pip-installed, for the host-site test: one with the
API only, one with ``[embed]``. Building them (about a minute of pip) starts in a background thread as
soon as the session has collected that test, so that it overlaps the tests before it; the test waits
for the result (``ready()``), which is the build's own outcome, never a guess at its duration."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import ROOT

# What the package is built from: a copy, so that building leaves nothing in the checkout.
PACKAGE_FILES = ("pyproject.toml", "README.md", "LICENSE", "vectorstore")


@dataclass(frozen=True)
class Venvs:
    source: Path  # the copy of the checkout that was installed
    bare: Path  # vectorstore alone: no torch, no sentence-transformers
    embed: Path  # vectorstore[embed], with the CPU build of torch


_executor: ThreadPoolExecutor | None = None
_future: Future | None = None
_root: Path | None = None


def _run(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True, timeout=900)
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


def _build(root: Path, source: Path) -> Venvs:
    bare, embed = root / "bare", root / "embed"
    for venv in (bare, embed):
        _run(sys.executable, "-m", "venv", str(venv))
    # --no-compile: byte-compiling the model stack costs more than the rest of the install.
    pip = ("-m", "pip", "install", "--quiet", "--no-compile")
    _run(str(bare / "bin" / "python"), *pip, str(source))
    # torch first, pinned: the CPU build on this disk (the README's CPU index gives the same); an
    # unpinned torch, asked for by sentence-transformers, would be a CUDA build of several GB.
    _run(str(embed / "bin" / "python"), *pip, "torch==2.13.0")
    _run(str(embed / "bin" / "python"), *pip, f"{source}[embed]")
    return Venvs(source, bare, embed)


def start() -> None:
    """Begin building (once per session), from the checkout as it is now."""
    global _executor, _future, _root
    if _future is not None:
        return
    _root = Path(tempfile.mkdtemp(prefix="vectorstore-venvs-"))
    source = _package_source(_root / "src")
    _executor = ThreadPoolExecutor(1, thread_name_prefix="venvs")
    _future = _executor.submit(_build, _root, source)


def ready() -> Venvs:
    """The built environments (building them now if no one started it); raises what the build raised."""
    start()
    assert _future is not None
    return _future.result(timeout=1800)


def cleanup() -> None:
    if _future is not None:
        _future.cancel()
        _executor.shutdown(wait=False, cancel_futures=True)
    if _root is not None:
        shutil.rmtree(_root, ignore_errors=True)
