"""The forecast of the periodic sweep (SPEC 12.3), run by a real Celery worker on Redis and
PostgreSQL, e-mailed through the fake provider of ``test_worker``.

The worker runs on its own clock (the real one, or the one ``TEST_NOW`` moved, ticking:
``test_worker.celery_command``), which no test can stop. So the test travels nowhere: it
takes the present as it is and builds the usage that makes the projection cross at it.
It picks a line whose current period is at least 12 % gone (past the 10 % before which
nothing is forecast, with a margin for the seconds the worker takes) and has at least an
hour left: the whole-metric month in UTC, else a week line in UTC-12, else one in UTC+14.
One of the two week lines always fits, since their weeks start 26 hours apart. The usage
is recorded with a past ``occurred_at`` inside that period, and the blocked threshold set
so that the average rate reaches it halfway through what is left of the period: seconds
later, in the worker, the projection still lands well inside the period.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone
from django.utils.translation import override

from accounts.windows import PeriodKind, window_containing
from backoffice.services import limits_replace, usage_events_record
from config.dates import day_text
from notifications.models import Delivery, Notification
from notifications.tasks import sweep_notifications
from tests.factories import AccountFactory
from tests.integration.test_worker import (  # noqa: F401 (the fixtures of the worker tests)
    WAIT,
    broker,
    provider,
    worker,
)
from tests.notifications.factories import usage_already_counted

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.redis,
    pytest.mark.worker,
    pytest.mark.django_db(transaction=True, serialized_rollback=True),
]

TOKENS = "text_tokens"
USED = 1_000_000  # tokens
# (line kind, time zone) tried in this order (see the module's docstring).
CANDIDATES = (("month", "UTC"), ("week", "Etc/GMT+12"), ("week", "Pacific/Kiritimati"))


def line_for_now(now: datetime) -> tuple[str, str, datetime, datetime]:
    for kind, zone_name in CANDIDATES:
        window = window_containing(kind=PeriodKind(kind), instant=now, zone=ZoneInfo(zone_name))
        start, end = window.start, window.end
        if (now - start) * 100 >= (end - start) * 12 and end - now >= timedelta(hours=1):
            return kind, zone_name, start, end
    raise AssertionError(f"no line fits {now.isoformat()}")  # cannot happen: see above


def forecast_account(now: datetime) -> tuple[object, str, datetime]:
    """An Enterprise account whose chosen line, with ``USED`` tokens used, is projected to
    reach its blocked threshold halfway through what is left of its period."""
    kind, zone_name, start, end = line_for_now(now)
    elapsed, left = now - start, end - now
    blocked = -(-USED * (elapsed + left / 2) // elapsed)  # ceiling: above USED, never at it
    account = AccountFactory(name="Acme Speech", external_id="crm-42", timezone=zone_name)
    line = {"warning": None, "blocked": blocked}
    limits_replace(
        account=account,
        data={
            "limits": {TOKENS: line} if kind == "month" else {},
            "scoped_limits": []
            if kind == "month"
            else [{"metric": TOKENS, "period": "week", "window_days": None, "labels": {}, **line}],
            "recipients": {"warning": [{"email": "pm@example.com", "language": "fr"}]},
        },
    )
    usage_events_record(
        payload={
            "event_id": "past",
            "account": str(account.pk),
            "metric": TOKENS,
            "quantity": USED,
            "occurred_at": (start + elapsed / 2).isoformat(),
        },
        now=now,
    )
    return account, kind, end


def account_past_its_warning() -> None:
    """Another account whose warning threshold is reached by usage nothing evaluated yet:
    the next sweep e-mails it, which tells when that sweep has run."""
    account = AccountFactory(timezone="UTC")
    limits_replace(
        account=account,
        data={
            "limits": {TOKENS: {"warning": 10, "blocked": 10_000_000_000}},
            "recipients": {"warning": [{"email": "ops@example.com", "language": "en"}]},
        },
    )
    usage_already_counted(account, 20)


def test_the_sweep_run_by_the_worker_sends_one_forecast_and_then_no_more(worker, provider):  # noqa: F811
    # given: a line whose average rate reaches its blocked threshold before its period ends
    account, kind, end = forecast_account(timezone.now())
    assert not Notification.objects.exists()
    # when: the beat task, run by the worker
    sweep_notifications.delay()
    (message,) = provider.wait_for(1)
    # then: one forecast, e-mailed in French with its projected date and headers
    notice = Notification.objects.get()
    assert (notice.level, notice.period_kind) == ("forecast", kind)
    assert notice.projected_at < end
    zone = ZoneInfo(account.timezone)
    with override("fr"):
        day = day_text(notice.projected_at.astimezone(zone).date())
    assert message["To"] == "pm@example.com"
    assert message["Subject"].startswith(
        f"Prévision : Acme Speech pourrait atteindre sa limite « Jetons texte » le {day}"
    )
    headers = {h["Name"]: h["Value"] for h in message["Headers"]}
    assert headers["X-Usage-Level"] == "forecast"
    assert headers["X-Usage-Projected-At"] == notice.projected_at.astimezone(zone).isoformat()
    assert list(Delivery.objects.values_list("status", flat=True)) == ["sent"]
    # when: the sweep runs again (with another account's warning to show it has run)
    account_past_its_warning()
    sweep_notifications.delay()
    messages = provider.wait_for(2)
    # then: that warning, and no second forecast
    assert sorted(m["To"] for m in messages) == ["ops@example.com", "pm@example.com"]
    assert Notification.objects.filter(level="forecast").count() == 1
    deadline = time.monotonic() + WAIT
    while Delivery.objects.exclude(status="sent").exists():
        assert time.monotonic() < deadline, "a delivery was not recorded as sent"
        time.sleep(0.1)
