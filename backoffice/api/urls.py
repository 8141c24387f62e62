"""Routes of the API, under ``/api/v1/``.

Ids are matched as ``str``, not ``uuid``, so that a malformed id still reaches DRF and
answers a JSON 404 instead of Django's HTML page.
"""

from __future__ import annotations

from django.urls import path

from . import accounts, usage, webhooks

urlpatterns = [
    path("accounts/", accounts.AccountListView.as_view(), name="account-list"),
    path("accounts/<str:id>/", accounts.AccountDetailView.as_view(), name="account-detail"),
    path("accounts/<str:id>/limits/", accounts.AccountLimitsView.as_view(), name="account-limits"),
    path(
        "accounts/<str:id>/webhooks/",
        webhooks.AccountWebhooksView.as_view(),
        name="account-webhooks",
    ),
    path("usage/events/", usage.UsageEventsView.as_view(), name="usage-events"),
    path("accounts/<str:id>/usage/", usage.AccountUsageView.as_view(), name="account-usage"),
    path(
        "accounts/<str:id>/capacities/",
        usage.CapacitiesView.as_view(),
        name="account-capacities",
    ),
    path(
        "accounts/<str:id>/usage/check/", usage.UsageCheckView.as_view(), name="account-usage-check"
    ),
    path(
        "accounts/<str:id>/usage/reservations/",
        usage.ReservationsView.as_view(),
        name="account-reservations",
    ),
    path(
        "accounts/<str:id>/usage/reservations/<str:reservation_id>/",
        usage.ReservationDetailView.as_view(),
        name="account-reservation",
    ),
]
