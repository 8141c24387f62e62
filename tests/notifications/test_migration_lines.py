"""The migration to notifications per line keeps the ledger (notifications 0006).

Rows recorded before it are notifications of the whole-metric monthly lines: after it they
are ``month`` lines without labels, their period starting at the first instant of their
month in the account's time zone, so that a crossing recorded before the migration and seen
again after it inserts nothing.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest
from django.core.management import call_command

from accounts.models import Account
from notifications.models import Notification
from notifications.services import Crossing, _crossings_insert
from tests.migrations import migrate

BEFORE = [("notifications", "0005_notification_published_at")]
AFTER = [("notifications", "0006_notification_lines")]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_existing_notifications_become_monthly_line_notifications():
    # given: the ledger as it was, in Paris and in St John's (UTC-03:30)
    apps = migrate(BEFORE)
    OldAccount = apps.get_model("accounts", "Account")
    OldNotification = apps.get_model("notifications", "Notification")
    paris = OldAccount.objects.create(external_id="p", name="Paris", timezone="Europe/Paris")
    johns = OldAccount.objects.create(external_id="j", name="J", timezone="America/St_Johns")
    for account, level, period in [
        (paris, "warning", date(2027, 3, 1)),
        (paris, "blocked", date(2027, 4, 1)),
        (johns, "warning", date(2027, 3, 1)),
    ]:
        OldNotification.objects.create(
            account=account,
            metric="text_tokens",
            level=level,
            period=period,
            threshold=100,
            used_milli=100_000,
        )
    # when
    migrate(AFTER)
    call_command("migrate", verbosity=0)  # the later migrations, as a deployment runs them
    # then
    rows = sorted(
        Notification.objects.values_list(
            "account__external_id",
            "period_kind",
            "window_days",
            "labels_key",
            "level",
            "period",
            "period_start",
            "recorded_only",
        )
    )
    assert rows == [
        ("j", "month", None, "", "warning", date(2027, 3, 1),
         datetime(2027, 3, 1, 3, 30, tzinfo=UTC), False),
        ("p", "month", None, "", "blocked", date(2027, 4, 1),
         datetime(2027, 3, 31, 22, tzinfo=UTC), False),
        ("p", "month", None, "", "warning", date(2027, 3, 1),
         datetime(2027, 2, 28, 23, tzinfo=UTC), False),
    ]  # fmt: skip
    # and the same crossing, seen again, is already in the ledger
    account = Account.objects.get(external_id="p")
    again = Crossing(
        account_id=account.pk,
        metric="text_tokens",
        level="warning",
        period=date(2027, 3, 1),
        period_start=datetime(2027, 2, 28, 23, tzinfo=UTC),
        threshold=100,
        used_milli=120_000,
    )
    assert _crossings_insert([again], datetime(2027, 3, 20, tzinfo=UTC)) == []
    assert Notification.objects.count() == 3
