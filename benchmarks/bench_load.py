"""Bounded API load: N clients against the production server (gunicorn, DEBUG off) on 127.0.0.1 for a
fixed time, mixing searches, reads and inserts. Reports errors, per-operation p50/p99 and throughput.

    .venv/bin/python benchmarks/bench_load.py [--clients 8] [--seconds 30] [--workers 2]

It works in its own database, created afresh and filled with fixtures/sotu.parquet (3,954 passages;
embedded once with the bundled model and cached in benchmarks/.cache/). tests/test_load.py runs the
same load for a shorter time against the test database and asserts that nothing failed and every
insert was stored once; it never asserts a timing.
"""

from __future__ import annotations

import argparse
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
from urllib.parse import urlencode

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

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
        lines += [f"error: {e}" for e in self.errors]
        return "\n".join(lines)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body=None, token: str | None = None) -> tuple[int, bytes]:
    """One request on its own connection (gunicorn's sync workers close each one)."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@contextlib.contextmanager
def serve(database_url: str, workers: int = 2, env: dict[str, str] | None = None) -> Iterator[int]:
    """gunicorn with the site's production settings, as `make run` starts it; yields its port."""
    port = free_port()
    child_env = {**(os.environ if env is None else env), "DATABASE_URL": database_url, "DJANGO_DEBUG": "0"}
    child_env.pop("DJANGO_SETTINGS_MODULE", None)
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "project.wsgi:application",
            "--config",
            "python:project.gunicorn",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(workers),
            "--log-level",
            "warning",
        ],
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
            if server.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {server.stdout.read()}")
            if time.monotonic() > deadline:
                raise RuntimeError("gunicorn did not answer /api/health in 60 s")
            time.sleep(0.2)
        yield port
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


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
) -> LoadResult:
    """``clients`` threads send the MIX of requests for ``seconds``; every answer is checked."""
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
            started = time.perf_counter()
            try:
                status, payload = request(port, method, path, body, auth)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument(
        "--baseline-threads",
        type=int,
        default=0,
        help="then run again with this many torch threads per worker and print the ratios",
    )
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import pyarrow.parquet as pq
    from _common import setup_database

    url = setup_database("load")
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    from vectorstore import ingest
    from vectorstore.models import ApiToken, Document

    cache = ROOT / "benchmarks" / ".cache" / "sotu.embedded.parquet"
    if not cache.exists():
        cache.parent.mkdir(exist_ok=True)
        print("embedding fixtures/sotu.parquet once (about a minute on 2 cores) ...", flush=True)
        ingest.embed_parquet(ROOT / "fixtures" / "sotu.parquet", cache, progress=False)
    table = pq.read_table(cache)
    ingest.load(table, progress=False)
    user = get_user_model().objects.create_user("bench-load")
    user.user_permissions.add(Permission.objects.get(codename="add_document"))
    _, token = ApiToken.issue(user, "bench_load")
    vectors = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    texts = table.column("text").to_pylist()
    categories = sorted(set(Document.objects.values_list("category", flat=True)))
    ids = list(Document.objects.values_list("pk", flat=True))

    runs = [("one torch thread per core per worker (project/gunicorn.py)", None)]
    if args.baseline_threads:
        runs.append((f"{args.baseline_threads} torch threads per worker", str(args.baseline_threads)))
    results = []
    for label, threads in runs:
        env = dict(os.environ)
        if threads:
            env["VECTORSTORE_TORCH_THREADS"] = threads
        before = Document.objects.count()
        with serve(url, workers=args.workers, env=env) as port:
            for _ in range(args.workers * 2):  # every worker has loaded the model at boot
                request(port, "POST", "/api/search", {"query": "the union", "mode": "hybrid"})
            result = run_load(
                port,
                token=token,
                vectors=vectors,
                texts=texts,
                categories=categories,
                ids=ids,
                clients=args.clients,
                seconds=args.seconds,
                seed=len(results),
            )
        print(f"== {label}")
        print(result.report())
        stored = Document.objects.count() - before
        print(f"inserts answered 201: {len(result.created)}, stored: {stored}")
        if result.error_count or stored != len(result.created):
            raise SystemExit(1)
        results.append(result)
        print(
            json.dumps(
                {
                    "run": label,
                    "clients": args.clients,
                    "workers": args.workers,
                    "seconds": round(result.seconds, 1),
                    "requests_per_s": round(result.requests / result.seconds, 1),
                    "errors": result.error_count,
                    "ops": {op: [n, round(p50, 1), round(p99, 1)] for op, n, p50, p99 in result.table()},
                }
            )
        )
    if len(results) == 2:
        ours, base = (r.requests / r.seconds for r in results)
        p99_ours, p99_base = (r.table()[-1][3] for r in results)
        print(f"requests/s ours / baseline {ours / base:.2f}, p99 baseline / ours {p99_base / p99_ours:.2f}")


if __name__ == "__main__":
    main()
