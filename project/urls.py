from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

urlpatterns = [
    # The site's root (where the admin's "view site" points): the API's interactive documentation.
    path("", RedirectView.as_view(url="/api/docs", permanent=False)),
    path("admin/", admin.site.urls),
    path("api/", include("vectorstore.urls")),
]
