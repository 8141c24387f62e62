"""The use cases spanning apps write and notify in one transaction, or do neither."""

from __future__ import annotations

import pytest
from django.core import mail
from django.db import DatabaseError
from django.utils import timezone

import notifications.services
from accounts.selectors import limits_document_get
from backoffice.services import extensions_grant, limits_patch, limits_replace
from notifications.models import Notification
from tests.factories import AccountFactory, LimitFactory, UserFactory
from tests.notifications.factories import usage_already_counted
from usage.models import Extension
from usage.periods import period_containing

pytestmark = pytest.mark.django_db

LIMITS = {"limits": {"text_tokens": {"warning": None, "blocked": 500}}, "recipients": {}}


def ledger(account):
    return sorted(
        Notification.objects.filter(account=account).values_list("level", "threshold", "period")
    )


def ledger_unavailable(*args, **kwargs):
    raise DatabaseError("ledger unavailable")


@pytest.mark.parametrize("write", [limits_replace, limits_patch])
def test_a_limits_change_is_stored_with_the_crossing_it_causes_or_not_at_all(monkeypatch, write):
    # given: usage of 900 tokens counted before any limit, and a ledger that cannot be written
    account = AccountFactory()
    usage_already_counted(account, 900)
    before = limits_document_get(account=account)
    with monkeypatch.context() as patch:
        patch.setattr(notifications.services, "_insert_notifications", ledger_unavailable)
        # when: a blocked threshold of 500, which the usage passed
        with pytest.raises(DatabaseError):
            write(account=account, data=LIMITS)
    # then: the limits were refused with their crossing, so a retry stores both
    assert limits_document_get(account=account) == before
    assert ledger(account) == []
    write(account=account, data=LIMITS)
    period = period_containing(timezone.now(), account.zone).first_day
    assert limits_document_get(account=account).as_data()["limits"]["text_tokens"] == {
        "warning": None,
        "blocked": 500,
    }
    assert ledger(account) == [("blocked", 500, period)]
    assert mail.outbox == []  # no blocked recipient: the crossing is recorded, sent to no one


def test_extensions_are_granted_with_the_evaluation_of_the_thresholds_or_not_at_all(
    monkeypatch,
):
    # given: an account with a blocked threshold, whose evaluation fails
    account = AccountFactory()
    LimitFactory(account=account, metric="text_tokens", warning=None, blocked=1000)
    manager = UserFactory(username="pm")
    row = {"metric": "text_tokens", "amount": 500, "reason": "Launch week"}

    def evaluation_fails(**kwargs):
        raise DatabaseError("usage locks unavailable")

    with monkeypatch.context() as patch:
        patch.setattr("backoffice.services.thresholds_evaluate", evaluation_fails)
        # when
        with pytest.raises(DatabaseError):
            extensions_grant(account=account, rows=[row], actor=manager)
    # then: nothing granted; a retry grants it
    assert not Extension.objects.exists()
    [extension] = extensions_grant(account=account, rows=[row], actor=manager)
    assert list(Extension.objects.values_list("pk", "amount", "reason", "granted_by")) == [
        (extension.pk, 500, "Launch week", manager.pk)
    ]
