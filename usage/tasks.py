"""Celery tasks of the usage app; thin: each parses nothing and calls one service."""

from __future__ import annotations

import logging
from datetime import timedelta

from celery import shared_task
from django.utils import timezone

from .services import counters_rebuild, reservations_expire

logger = logging.getLogger(__name__)

RECONCILE_DAYS = 2  # days before today (UTC) that the periodic reconciliation checks


@shared_task(ignore_result=True)
def reconcile_recent_counters() -> int:
    """Repair the counters of the last days that differ from their events; returns how many.

    Periodic (``CELERY_BEAT_SCHEDULE``), so it takes no ids: it sweeps every account.
    A drift means a bug or a manual change, so each one is logged as an error.
    """
    since_day = timezone.now().date() - timedelta(days=RECONCILE_DAYS)
    drifts = counters_rebuild(since_day=since_day, repair=True, repaired_by="reconcile task")
    for drift in drifts:
        logger.error(
            "Usage counter repaired: account %s (%s), %s on %s: counter %s, events %s",
            drift.external_id,
            drift.account_id,
            drift.metric,
            drift.place,
            "none" if drift.found_milli is None else drift.found,
            drift.expected,
        )
    if drifts:
        logger.error("Usage counters repaired since %s: %d", since_day.isoformat(), len(drifts))
    else:
        logger.info("Usage counters checked since %s: no drift", since_day.isoformat())
    return len(drifts)


@shared_task(ignore_result=True)
def expire_reservations() -> int:
    """Write ``expired`` on the reservations past their expiry; returns how many.

    Periodic (``CELERY_BEAT_SCHEDULE``). Tidying only: every read already takes a
    reservation past its expiry as expired, so a late or lost run changes no answer.
    """
    expired = reservations_expire()
    logger.info("Reservations marked expired: %d", expired)
    return expired
