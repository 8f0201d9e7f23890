"""The benchmarks' shared harness, importable by tests too: a fresh database of their own, the
production server started as `make run` starts it, and a bounded load of mixed API requests.

    from benchmarks.harness import serve, setup_database, run_load
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"  # embedded corpora, computed once (git-ignored)


def setup_database(suffix: str) -> str:
    """Create ``<database>_<suffix>`` afresh beside the site's database, migrate it, point Django at it.

    A new database each run: a run stopped half-way must not leave the next one without its indexes,
    and stored data is never touched. Returns its URL (also put in DATABASE_URL for child processes).
    """
    import psycopg

    from project.db import embedded_url

    base = os.environ.get("DATABASE_URL") or embedded_url()
    parts = urlsplit(base)
    name = f"{parts.path.lstrip('/')}_{suffix}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(parts._replace(path=f"/{name}"))
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return url


# The mix: mostly searches, as a search service sees; inserts embed one text each on the server.
MIX = {"vector": 40, "filtered": 15, "hybrid": 10, "get": 10, "list": 5, "insert": 20}
EXPECTED = {"insert": 201}


@dataclass
class LoadResult:
    seconds: float
    clients: int
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    created: dict[str, int] = field(default_factory=dict)  # external_id -> id
    # Reads answered, by the database that answered them (the X-Vectorstore-Database header).
    read_from: dict[str, int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latencies.values())

    def table(self) -> list[tuple[str, int, float, float]]:
        """(operation, count, p50 ms, p99 ms), all operations last."""
        rows = []
        every: list[float] = []
        for op in MIX:
            values = self.latencies.get(op, [])
            every += values
            if values:
                rows.append((op, len(values), *(float(np.percentile(values, q)) * 1000 for q in (50, 99))))
        if every:
            rows.append(("all", len(every), *(float(np.percentile(every, q)) * 1000 for q in (50, 99))))
        return rows

    def report(self) -> str:
        lines = [
            f"{self.clients} clients, {self.seconds:.1f} s: {self.requests} requests, "
            f"{self.requests / self.seconds:.1f} requests/s, {self.error_count} errors",
            f"{'operation':<10} {'count':>7} {'p50 ms':>8} {'p99 ms':>8}",
        ]
        lines += [f"{op:<10} {n:>7} {p50:>8.1f} {p99:>8.1f}" for op, n, p50, p99 in self.table()]
        if self.read_from:
            reads = sum(self.read_from.values())
            lines.append(
                "reads answered by: "
                + ", ".join(f"{db} {n} ({n / reads:.1%})" for db, n in sorted(self.read_from.items()))
            )
        lines += [f"error: {e}" for e in self.errors]
        return "\n".join(lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body=None, token: str | None = None) -> tuple[int, bytes]:
    """One request on its own connection (gunicorn's sync workers close each one)."""
    status, _, payload = request_with_headers(port, method, path, body, token)
    return status, payload


def request_with_headers(
    port: int, method: str, path: str, body=None, token: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request on its own connection: status, headers, body."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@contextlib.contextmanager
def serve(
    database_url: str,
    workers: int = 2,
    env: dict[str, str] | None = None,
    extra: Sequence[str] = (),
    server: str = "gunicorn",
) -> Iterator[int]:
    """The site with its production settings, as `make serve` (gunicorn, WSGI) or `make serve-asgi`
    (``server="uvicorn"``, ASGI) starts it (``extra`` server arguments after them, to compare server
    models); yields its port."""
    port = free_port()
    child_env = {**(os.environ if env is None else env), "DATABASE_URL": database_url, "DJANGO_DEBUG": "0"}
    child_env.pop("DJANGO_SETTINGS_MODULE", None)
    if (
        server == "granian"
    ):  # WSGI, the same processes and threads as gunicorn's gthread (project/gunicorn.py)
        command = [
            "granian", "--interface", "wsgi", "project.wsgi:application", "--host", "127.0.0.1",
            "--port", str(port), "--workers", str(workers), "--blocking-threads", "4",
            "--log-level", "warning", "--no-ws",
        ]  # fmt: skip
    elif server == "uvicorn":
        child_env["WEB_CONCURRENCY"] = str(workers)
        command = [
            "uvicorn", "project.asgi:application", "--host", "127.0.0.1", "--port", str(port),
            "--lifespan", "off", "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
    else:
        command = [
            "gunicorn", "project.wsgi:application", "--config", "python:project.gunicorn",
            "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--log-level", "warning",
        ]  # fmt: skip
    server_process = subprocess.Popen(
        [sys.executable, "-m", *command, *extra],
        cwd=ROOT,
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if request(port, "GET", "/api/health")[0] == 200:
                    break
            except OSError:
                pass
            if server_process.poll() is not None:
                raise RuntimeError(f"{server} exited: {server_process.stdout.read()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server} did not answer /api/health in 60 s")
            time.sleep(0.2)
        yield port
    finally:
        server_process.terminate()
        try:
            server_process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server_process.kill()


def run_load(
    port: int,
    *,
    token: str,
    vectors: np.ndarray,
    texts: Sequence[str],
    categories: Sequence[str],
    ids: Sequence[int],
    clients: int = 8,
    seconds: float = 30.0,
    seed: int = 0,
    reads_with_token: float = 0.0,
) -> LoadResult:
    """``clients`` threads send the MIX of requests for ``seconds``; every answer is checked.

    ``reads_with_token``: the share of reads that carry the writers' token (clients that read what they
    write: with replicas, read-your-writes applies to them); the others are anonymous."""
    result = LoadResult(seconds=seconds, clients=clients, latencies={op: [] for op in MIX})
    lock = threading.Lock()
    ops, weights = zip(*MIX.items(), strict=True)
    deadline = time.monotonic() + seconds

    def client(n: int) -> None:
        rng = random.Random(seed * 1000 + n)
        made = 0
        while time.monotonic() < deadline:
            op = rng.choices(ops, weights)[0]
            vector = vectors[rng.randrange(len(vectors))]
            if op == "vector":
                call = ("POST", "/api/search", {"vector": vector.tolist(), "k": 10}, None)
            elif op == "filtered":
                spec = {"category": rng.choice(categories), "year": {"$gte": rng.randrange(1790, 2020)}}
                call = ("POST", "/api/search", {"vector": vector.tolist(), "k": 10, "filters": spec}, None)
            elif op == "hybrid":
                words = rng.choice(texts).split()[:6]
                call = ("POST", "/api/search", {"query": " ".join(words) or "union", "mode": "hybrid"}, None)
            elif op == "get":
                call = ("GET", f"/api/documents/{rng.choice(ids)}", None, None)
            elif op == "list":
                query = urlencode({"category": rng.choice(categories), "limit": 20})
                call = ("GET", f"/api/documents?{query}", None, None)
            else:
                made += 1
                external_id = f"load-{seed}-{n}-{made}"
                doc = {
                    "text": rng.choice(texts),
                    "external_id": external_id,
                    "category": rng.choice(categories),
                    "metadata": {"year": rng.randrange(1790, 2020), "source": "bench_load"},
                }
                call = ("POST", "/api/documents", doc, token)
            method, path, body, auth = call
            if reads_with_token and op != "insert" and rng.random() < reads_with_token:
                auth = token
            started = time.perf_counter()
            headers: dict[str, str] = {}
            try:
                status, headers, payload = request_with_headers(port, method, path, body, auth)
            except Exception as exc:  # a refused connection, a timeout, a bad request line: all errors
                status, payload = None, repr(exc).encode()
            elapsed = time.perf_counter() - started
            with lock:
                if status != EXPECTED.get(op, 200):
                    result.error_count += 1
                    if len(result.errors) < 20:
                        result.errors.append(f"{op} {method} {path}: {status} {payload[:200]!r}")
                    continue
                result.latencies[op].append(elapsed)
                database = headers.get("X-Vectorstore-Database")
                if op != "insert" and database:
                    key = f"{database} (with token)" if auth else database
                    result.read_from[key] = result.read_from.get(key, 0) + 1
                if op == "insert":
                    result.created[body["external_id"]] = json.loads(payload)["ids"][0]

    threads = [threading.Thread(target=client, args=(n,), name=f"load-client-{n}") for n in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.seconds = time.perf_counter() - started
    return result
