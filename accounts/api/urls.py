"""Routes of the accounts API, under ``/api/v1/``.

Ids are matched as ``str``, not ``uuid``, so that a malformed id still reaches DRF and
answers a JSON 404 instead of Django's HTML page.
"""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("accounts/", views.AccountListView.as_view(), name="account-list"),
    path("accounts/<str:id>/", views.AccountDetailView.as_view(), name="account-detail"),
    path("accounts/<str:id>/limits/", views.AccountLimitsView.as_view(), name="account-limits"),
]
