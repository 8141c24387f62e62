from django.urls import path

from . import views

urlpatterns = [
    path("usage/events/", views.UsageEventsView.as_view(), name="usage-events"),
    path("accounts/<str:id>/usage/", views.AccountUsageView.as_view(), name="account-usage"),
    path(
        "accounts/<str:id>/capacities/",
        views.CapacitiesView.as_view(),
        name="account-capacities",
    ),
    path(
        "accounts/<str:id>/usage/check/", views.UsageCheckView.as_view(), name="account-usage-check"
    ),
]
