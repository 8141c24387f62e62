"""Reads of the notifications app."""

from __future__ import annotations

from datetime import date

from django.db.models import QuerySet

from accounts.models import Account

from .models import Notification, WebhookEndpoint


def notification_periods() -> list[date]:
    """The months (their first day) in which notified periods start, newest first."""
    return list(Notification.objects.dates("period", "month", order="DESC"))


def webhook_endpoint_list(*, account: Account) -> QuerySet[WebhookEndpoint]:
    """The account's webhook endpoints, oldest first (the order a ``PUT`` gave them)."""
    return WebhookEndpoint.objects.filter(account=account).order_by("created_at", "pk")
