"""One-off extensions: granted for a period, validated with messages keyed by field."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest
from django.core.exceptions import ValidationError

from accounts.models import Plan
from tests.factories import AccountFactory, LimitFactory, UserFactory
from usage.periods import Period
from usage.selectors import account_usage, current_period
from usage.services import extension_grant

pytestmark = pytest.mark.django_db


def test_an_extension_raises_the_blocked_threshold_of_the_current_period():
    # given
    account = AccountFactory()
    LimitFactory(account=account, metric="text_tokens", warning=None, blocked=1000)
    manager = UserFactory(username="pm")

    # when
    extension = extension_grant(
        account=account, metric="text_tokens", amount=500, reason="  Launch week ", actor=manager
    )

    # then
    assert (extension.period, extension.amount, extension.reason, extension.granted_by) == (
        current_period(account).first_day,
        500,
        "Launch week",
        manager,
    )
    tokens = account_usage(account=account)[2]
    assert (tokens.extension, tokens.effective_blocked) == (500, 1500)


def test_an_extension_may_be_granted_ahead_for_a_later_period():
    # given
    account = AccountFactory()
    LimitFactory(account=account, metric="text_tokens", warning=None, blocked=1000)
    later = current_period(account).next

    # when
    extension = extension_grant(
        account=account, metric="text_tokens", amount=1, reason="Planned", actor=None, period=later
    )

    # then
    assert (extension.period, extension.granted_by) == (later.first_day, None)


@pytest.mark.parametrize(
    ("changes", "errors"),
    [
        ({"amount": 0}, {"amount": ["Ensure this value is greater than 0."]}),
        ({"amount": -5}, {"amount": ["Ensure this value is greater than 0."]}),
        ({"amount": 1.5}, {"amount": ["A whole number is required."]}),
        ({"amount": "10"}, {"amount": ["A whole number is required."]}),
        ({"amount": True}, {"amount": ["A whole number is required."]}),
        (
            {"amount": 10**15 + 1},
            {"amount": ["Ensure this value is less than or equal to 1000000000000000."]},
        ),
        ({"reason": "   "}, {"reason": ["This field is required."]}),
        (
            {"metric": "images"},
            {
                "metric": [
                    "“images” is not a valid metric. Expected one of: "
                    "audio_transcribed_seconds, audio_analyzed_seconds, text_tokens."
                ]
            },
        ),
        (
            {"period": Period(2026, 1, ZoneInfo("Europe/Paris"))},
            {"period": ["Extensions can only be granted for the current period or a later one."]},
        ),
    ],
)
def test_a_bad_extension_is_refused_with_its_message(changes, errors):
    # given
    account = AccountFactory()
    LimitFactory(account=account, metric="text_tokens", warning=None, blocked=1000)
    grant = {"metric": "text_tokens", "amount": 100, "reason": "Launch", "actor": None} | changes

    # when
    with pytest.raises(ValidationError) as refused:
        extension_grant(account=account, **grant)

    # then
    assert refused.value.message_dict == errors
    assert not account.extensions.exists()


def test_an_extension_for_an_account_that_is_not_enterprise_is_refused():
    # given
    account = AccountFactory(plan=Plan.PRO)

    # when
    with pytest.raises(ValidationError) as refused:
        extension_grant(account=account, metric="text_tokens", amount=1, reason="x", actor=None)

    # then
    assert refused.value.message_dict == {
        "account": ["Extensions can only be granted to an Enterprise account."]
    }
    assert refused.value.error_dict["account"][0].code == "not_enterprise"
    assert not account.extensions.exists()


@pytest.mark.parametrize("blocked", [None, "no limit row"])
def test_an_extension_of_a_line_without_blocked_threshold_is_refused(blocked):
    # given: a warning threshold alone, or no limit at all
    account = AccountFactory()
    if blocked is None:
        LimitFactory(account=account, metric="text_tokens", warning=10, blocked=None)

    # when
    with pytest.raises(ValidationError) as refused:
        extension_grant(account=account, metric="text_tokens", amount=1, reason="x", actor=None)

    # then
    assert refused.value.message_dict == {
        "line": [
            "This line has no blocked threshold: an extension raises the blocked threshold, "
            "so set one first."
        ]
    }
    assert not account.extensions.exists()
