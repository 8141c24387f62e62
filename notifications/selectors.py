"""Reads of the notifications app."""

from __future__ import annotations

from django.db.models import QuerySet

from accounts.models import Account

from .models import WebhookEndpoint


def webhook_endpoint_list(*, account: Account) -> QuerySet[WebhookEndpoint]:
    """The account's webhook endpoints, oldest first (the order a ``PUT`` gave them)."""
    return WebhookEndpoint.objects.filter(account=account).order_by("created_at", "pk")
