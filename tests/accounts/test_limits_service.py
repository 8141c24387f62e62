"""The rules of SPEC section 3, through the one service every entry point uses."""

from __future__ import annotations

import pytest

from accounts.models import Limit, Plan, Recipient
from accounts.selectors import limits_document_get
from accounts.services import AccountNotEnterprise, LimitsInvalid
from backoffice.services import limits_patch, limits_replace
from tests.factories import AccountFactory, UserFactory

pytestmark = pytest.mark.django_db

WARNING_RULE = "At least one warning recipient is required when a warning threshold is set."


def test_every_metric_is_unlimited_until_a_threshold_is_set():
    # given
    account = AccountFactory()
    # when
    document = limits_document_get(account=account)
    # then
    assert document.as_data() == {
        "limits": {
            "audio_transcribed_seconds": {"warning": None, "blocked": None},
            "audio_analyzed_seconds": {"warning": None, "blocked": None},
            "text_tokens": {"warning": None, "blocked": None},
        },
        "recipients": {"warning": [], "blocked": []},
        "scoped_limits": [],
    }


def test_warning_threshold_without_recipient_is_refused_and_changes_nothing():
    account = AccountFactory()
    with pytest.raises(LimitsInvalid) as refused:
        limits_replace(account=account, data={"limits": {"text_tokens": {"warning": 10}}})
    assert refused.value.errors == {"recipients": {"warning": [WARNING_RULE]}}
    assert not Limit.objects.exists()


def test_blocked_threshold_without_recipients_is_accepted():
    account = AccountFactory()
    document = limits_replace(account=account, data={"limits": {"text_tokens": {"blocked": 5}}})
    assert document.limits["text_tokens"].blocked == 5
    assert document.limits["text_tokens"].warning is None


@pytest.mark.parametrize(("warning", "blocked"), [(10, 10), (11, 10)])
def test_warning_must_be_below_blocked(warning, blocked):
    account = AccountFactory()
    with pytest.raises(LimitsInvalid) as refused:
        limits_replace(
            account=account,
            data={
                "limits": {"text_tokens": {"warning": warning, "blocked": blocked}},
                "recipients": {"warning": [{"email": "pm@example.com"}]},
            },
        )
    assert refused.value.errors == {
        "limits": {
            "text_tokens": {
                "warning": ["The warning threshold must be lower than the blocked threshold."]
            }
        }
    }
    assert not Recipient.objects.exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "Ensure this value is greater than or equal to 0."),
        (1.5, "A valid integer is required."),
        ("ten", "A valid integer is required."),
        (True, "A valid integer is required."),
        (10**16, "Ensure this value is less than or equal to 1000000000000000."),
    ],
)
def test_thresholds_are_non_negative_integers(value, message):
    account = AccountFactory()
    with pytest.raises(LimitsInvalid) as refused:
        limits_replace(account=account, data={"limits": {"text_tokens": {"blocked": value}}})
    assert refused.value.errors == {"limits": {"text_tokens": {"blocked": [message]}}}


def test_recipient_language_defaults_to_the_account_language():
    account = AccountFactory(language="fr")
    document = limits_replace(
        account=account, data={"recipients": {"blocked": [{"email": "ops@example.com"}]}}
    )
    assert document.as_data()["recipients"]["blocked"] == [
        {"email": "ops@example.com", "language": "fr"}
    ]


def test_same_address_may_be_on_both_lists_but_once_per_list():
    account = AccountFactory()
    address = {"email": "pm@example.com", "language": "en"}
    limits_replace(
        account=account, data={"recipients": {"warning": [address], "blocked": [address]}}
    )
    with pytest.raises(LimitsInvalid) as refused:
        limits_replace(
            account=account,
            data={"recipients": {"warning": [address, {"email": "PM@example.com"}]}},
        )
    assert refused.value.errors == {
        "recipients": {"warning": {1: {"email": ["This address is already in the list."]}}}
    }
    assert Recipient.objects.count() == 2


def test_limits_are_refused_for_an_account_that_is_not_enterprise():
    account = AccountFactory(plan=Plan.PRO)
    with pytest.raises(AccountNotEnterprise):
        limits_replace(account=account, data={"limits": {"text_tokens": {"blocked": 5}}})
    assert not Limit.objects.exists()


def test_replace_clears_what_it_leaves_out_and_patch_merges():
    account = AccountFactory()
    limits_replace(
        account=account,
        data={
            "limits": {
                "text_tokens": {"warning": 8, "blocked": 10},
                "audio_analyzed_seconds": {"blocked": 60},
            },
            "recipients": {"warning": [{"email": "pm@example.com", "language": "fr"}]},
        },
    )
    patched = limits_patch(
        account=account, data={"limits": {"text_tokens": {"warning": None, "blocked": 20}}}
    )
    assert patched.as_data()["limits"]["text_tokens"] == {"warning": None, "blocked": 20}
    assert patched.as_data()["limits"]["audio_analyzed_seconds"] == {"warning": None, "blocked": 60}
    assert patched.as_data()["recipients"]["warning"] == [
        {"email": "pm@example.com", "language": "fr"}
    ]
    replaced = limits_replace(account=account, data={"limits": {"text_tokens": {"blocked": 3}}})
    assert replaced.as_data()["limits"]["audio_analyzed_seconds"] == {
        "warning": None,
        "blocked": None,
    }
    assert replaced.as_data()["recipients"] == {"warning": [], "blocked": []}


def test_every_change_is_recorded_with_who_and_the_old_and_new_values():
    account = AccountFactory()
    alice = UserFactory(username="alice")
    limits_replace(account=account, data={"limits": {"text_tokens": {"blocked": 10}}}, actor=alice)
    limits_patch(account=account, data={"limits": {"text_tokens": {"blocked": 15}}}, actor=alice)
    limit = Limit.objects.get(account=account, metric="text_tokens")
    newest, oldest = limit.history.order_by("-history_date")[:2]
    delta = newest.diff_against(oldest)
    assert [(c.field, c.old, c.new) for c in delta.changes] == [("blocked", 10, 15)]
    assert newest.history_user == alice
