"""The tests' URLs: the admin, and the app's API mounted as its README says."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("vectorstore.urls")),
]
