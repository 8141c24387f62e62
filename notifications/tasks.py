"""Celery tasks: thin, idempotent, and given ids (the database holds the state)."""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings

from .services import (
    deliveries_recover,
    early_tracking_events_purge,
    notification_deliver,
    thresholds_evaluate,
)

logger = logging.getLogger(__name__)


def retry_delay(retries: int) -> float:
    """Exponential backoff: base, 2 x base, 4 x base... capped at the maximum delay."""
    base = settings.NOTIFICATIONS_RETRY_BASE_DELAY
    return min(base * 2**retries, settings.NOTIFICATIONS_MAX_RETRY_DELAY)


@shared_task(bind=True, max_retries=None, ignore_result=True)
def deliver_notification(self, notification_id: int) -> None:
    """Send a notification's queued deliveries; retry the transient failures with backoff.

    A bug (anything but a provider error) fails the task; its delivery is left queued
    for the sweep to try again.
    """
    final = self.request.retries >= settings.NOTIFICATIONS_MAX_ATTEMPTS - 1
    outcome = notification_deliver(notification_id=notification_id, final_attempt=final)
    logger.info(
        "notification %s: %d sent, %d failed, %d to retry",
        notification_id,
        outcome.sent,
        outcome.failed,
        outcome.retry,
    )
    if outcome.retry:
        raise self.retry(countdown=retry_delay(self.request.retries))


@shared_task(ignore_result=True)
def sweep_notifications() -> None:
    """Find crossings no task handled, re-enqueue deliveries that lost their task or their
    worker, and forget tracking events that never found their delivery."""
    created = thresholds_evaluate()
    recovered = deliveries_recover()
    early_tracking_events_purge()
    if created or recovered:
        logger.warning(
            "sweep: %d crossing(s) recorded, %d notification(s) re-enqueued",
            len(created),
            len(recovered),
        )
