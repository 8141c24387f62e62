"""The project's URLs plus the floors the bench measures the real endpoints against."""

from django.urls import path

from bench.floors import (
    AccountReadFloorView,
    AuthenticatedFloorView,
    UncachedFloorView,
    plain_floor,
)
from config.urls import urlpatterns as project_urlpatterns

urlpatterns = [
    path("bench/floor/plain/", plain_floor),
    path("bench/floor/authenticated/", AuthenticatedFloorView.as_view()),
    path("bench/floor/authenticated-uncached/", UncachedFloorView.as_view()),
    path("bench/floor/account/<str:id>/", AccountReadFloorView.as_view()),
    *project_urlpatterns,
]
