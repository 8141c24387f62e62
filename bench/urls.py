"""The project's URLs plus the two floors the bench measures the real endpoints against."""

from django.urls import path

from bench.floors import AuthenticatedFloorView, UncachedFloorView, plain_floor
from config.urls import urlpatterns as project_urlpatterns

urlpatterns = [
    path("bench/floor/plain/", plain_floor),
    path("bench/floor/authenticated/", AuthenticatedFloorView.as_view()),
    path("bench/floor/authenticated-uncached/", UncachedFloorView.as_view()),
    *project_urlpatterns,
]
