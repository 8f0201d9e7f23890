"""ASGI entry point, for servers such as uvicorn: ``uvicorn project.asgi:application`` (``make serve-asgi``).

The API's search and similar endpoints load as async views (vectorstore.search.asearch on pooled async
connections), the other views run on Django's thread as under any ASGI server. Each worker process loads
the embedding model before its first request, with torch on its share of the cores, and then freezes what
it loaded out of the garbage collector's reach, as project/gunicorn.py does for gunicorn's workers.
"""

import gc
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
os.environ["VECTORSTORE_SERVED_BY"] = "asgi"  # read by project/settings.py: no sync-only middleware

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

from vectorstore import conf

conf.serving_asgi()  # before Django loads the URLs: the API's reads as async views
# The admin's and the API docs' static files, from the apps' folders (WhiteNoise's job under WSGI).
application = ASGIStaticFilesHandler(get_asgi_application())

if os.environ.get("VECTORSTORE_PRELOAD_MODEL", "1") != "0":
    import torch

    # uvicorn takes its number of workers from WEB_CONCURRENCY when --workers is not given (make serve-asgi).
    workers = max(1, int(os.environ.get("WEB_CONCURRENCY") or 1))
    torch.set_num_threads(
        int(os.environ.get("VECTORSTORE_TORCH_THREADS") or max(1, (os.cpu_count() or 1) // workers))
    )
    from vectorstore.search import embed_query

    embed_query("warm up")
gc.freeze()
