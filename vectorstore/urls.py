"""``path("api/", include("vectorstore.urls"))`` mounts the app's REST API on a site without its own NinjaAPI.

A site that has one adds the router instead: ``api.add_router("/vectors/", "vectorstore.api.router")``.
"""

from django.urls import path
from ninja import NinjaAPI

from vectorstore import __version__
from vectorstore.api import router

api = NinjaAPI(title="vectorstore", version=__version__, urls_namespace="vectorstore")
api.add_router("", router)

urlpatterns = [path("", api.urls)]
