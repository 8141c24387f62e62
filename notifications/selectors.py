"""Reads of the notification ledger."""

from __future__ import annotations

from datetime import date

from .models import Notification


def notification_periods() -> list[date]:
    """The periods (their first day) that have notifications, newest first."""
    return list(
        Notification.objects.order_by("-period").values_list("period", flat=True).distinct()
    )
