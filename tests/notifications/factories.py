"""factory-boy factories of the notification ledger, and a way to put usage in place."""

from __future__ import annotations

import factory
from django.utils import timezone

from accounts.models import Account, Language, Level
from accounts.windows import window_from_key
from notifications.models import Delivery, Notification
from tests.factories import AccountFactory
from usage.models import UsageCounter
from usage.periods import period_containing


class NotificationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Notification

    account = factory.SubFactory(AccountFactory)
    metric = "text_tokens"
    level = Level.WARNING
    period = factory.LazyAttribute(
        lambda n: period_containing(timezone.now(), n.account.zone).first_day
    )
    period_start = factory.LazyAttribute(
        lambda n: window_from_key(kind="month", key=f"{n.period:%Y-%m}", zone=n.account.zone).start
    )
    threshold = 800_000
    used_milli = 812_000_000
    is_test = False


class DeliveryFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Delivery

    notification = factory.SubFactory(NotificationFactory)
    email = factory.Sequence(lambda n: f"ops{n}@example.com")
    language = Language.EN
    status = Delivery.Status.SENT
    attempts = 1
    esp_message_id = factory.Sequence(lambda n: f"b7bc2f4a-e38e-4336-af7d-{n:012d}")
    sent_at = factory.LazyFunction(timezone.now)


def usage_already_counted(account: Account, quantity: int, metric: str = "text_tokens") -> None:
    """Usage of the current period stored as counters, without recording any notification.

    As usage counted before the limits were set: no service saw a crossing.
    """
    today = timezone.now().astimezone(account.zone).date()
    UsageCounter.objects.create(
        account=account,
        metric=metric,
        day=today,
        quantity_milli=quantity * 1000,
        updated_at=timezone.now(),
    )
