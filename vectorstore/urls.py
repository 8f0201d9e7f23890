"""``path("api/", include("vectorstore.urls"))`` mounts the app's REST API on a site without its own NinjaAPI.

A site that has one adds the router instead: ``api.add_router("/vectors/", "vectorstore.api.router")``.
"""

from django.urls import path
from ninja import NinjaAPI

from vectorstore import __version__
from vectorstore.api import router

DESCRIPTION = """Texts, their sentence-transformer vectors and their metadata in PostgreSQL with pgvector.

- `POST /search`: by meaning (`query` or a `vector`), by words (`mode: text`) or both (`mode: hybrid`),
  with `filters` on any field or metadata key (`$eq $in $lt ... $and $or $not`) and `mmr` for diversity;
- `GET /documents` (filtered, paginated), `GET /documents/{id}` and `/documents/{id}/similar`;
- `POST /documents` (one or up to 1,000, embedded on the server) and `DELETE /documents/{id}`: a bearer
  token (`manage.py create_api_token`) or a logged-in session with the model permission;
- `GET /health`: PostgreSQL, pgvector, the document count, the replicas and the stored search tuning.

Every input error is a 422 in one shape, `{"detail": [{"type", "loc", "msg"}]}`, `loc` naming the field."""

api = NinjaAPI(
    title="vectorstore", version=__version__, description=DESCRIPTION, urls_namespace="vectorstore"
)
api.add_router("", router)

urlpatterns = [path("", api.urls)]
