"""gunicorn settings for the site: ``gunicorn project.wsgi --config python:project.gunicorn``.

`make run`, the Dockerfile and benchmarks/bench_load.py start it this way; --bind and --workers
still come from the command line.
"""

from __future__ import annotations

import gc
import os

# Threaded workers: a request spends most of its time waiting on PostgreSQL (or torch, which releases
# the GIL), so each worker serves several at once, each thread keeping its own database connection
# (CONN_MAX_AGE) and HTTP keep-alive; sync workers answered one request at a time each and closed
# every connection. benchmarks/README.md has the measured difference.
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
threads = int(os.environ.get("GUNICORN_THREADS", "4"))

# gunicorn 25+ opens a control socket at one path per user ($XDG_RUNTIME_DIR or ~/.gunicorn), which
# every instance on the machine would share: each server here stays independent of the others.
# GUNICORN_CONTROL_SOCKET=PATH gives this instance one of its own, for gunicornc.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "")
control_socket_disable = not control_socket

# Each worker's torch would otherwise start one thread per core: two workers on two cores then run
# four busy threads and embed queries slower than one thread each would.
_torch_threads = os.environ.get("VECTORSTORE_TORCH_THREADS")


def post_fork(server, worker) -> None:
    torch_threads = _torch_threads or str(max(1, (os.cpu_count() or 1) // max(1, server.cfg.workers)))
    os.environ["OMP_NUM_THREADS"] = torch_threads  # read when the worker first imports torch


def post_worker_init(worker) -> None:
    """Load the embedding model before the first request, not during it (a few seconds on a CPU).
    VECTORSTORE_PRELOAD_MODEL=0 leaves it to the first text query (a site that only searches by vector).
    Then freeze what is loaded out of the garbage collector's reach."""
    if os.environ.get("VECTORSTORE_PRELOAD_MODEL", "1") != "0":
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        from vectorstore.search import embed_query

        embed_query("warm up")
        worker.log.info("embedding model loaded, torch on %s thread(s)", torch.get_num_threads())
    # Django, torch and the model leave about 520,000 objects the collector tracks; a full collection
    # walks them all, 410-500 ms on this machine, in the middle of whichever requests are running
    # (bench_serve's p99 of 600-700 ms). Frozen, they are never walked: a full collection then takes
    # under 1 ms (benchmarks/README.md).
    gc.freeze()
