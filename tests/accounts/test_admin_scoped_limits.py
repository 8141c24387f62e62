"""Scoped limits on the account page (SPEC sections 7 and 11.2): shown, edited, refused with
the service's messages next to the field that caused them, and in the change history."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.utils.html import escape

from accounts.models import Account, ScopedLimit
from backoffice.services import limits_replace
from tests.accounts.test_admin import (
    WARNING_RULE,
    add_recipient,
    change_url,
    inline_formset,
    page_data,
)
from tests.factories import AccountFactory, UserFactory

pytestmark = pytest.mark.django_db

BELOW_RULE = "The warning threshold must be lower than the blocked threshold."
DAY_LARGE = {
    "metric": "text_tokens",
    "period": "day",
    "window_days": None,
    "labels": {"model": "large"},
    "warning": 40000,
    "blocked": 50000,
}
PM = {"email": "pm@example.com", "language": "en"}


def add_line(data: dict[str, str], **fields: Any) -> None:
    """Fill a new row of the scoped limits inline, as "Add another scoped limit" does."""
    index = int(data["scoped_limits-TOTAL_FORMS"])
    data["scoped_limits-TOTAL_FORMS"] = str(index + 1)
    for name in ("metric", "period", "window_days", "label_technology", "label_vendor"):
        data[f"scoped_limits-{index}-{name}"] = ""
    for name in ("label_operation", "label_model", "warning", "blocked"):
        data[f"scoped_limits-{index}-{name}"] = ""
    for name, value in fields.items():
        data[f"scoped_limits-{index}-{name}"] = "" if value is None else str(value)


def post_lines(client, account, *lines: dict[str, Any], recipients=(), **changes: Any):
    data = page_data(client.get(change_url(account)))
    data.update({name: str(value) for name, value in changes.items()})
    for line in lines:
        add_line(data, **line)
    for recipient in recipients:
        add_recipient(data, *recipient)
    return client.post(change_url(account), data)


def scoped_errors(response) -> dict[str, Any]:
    """What the page shows of errors: above and in the scoped inline, above the recipients."""
    scoped = inline_formset(response, "scoped_limits")
    return {
        "scoped": list(scoped.non_form_errors()),
        "rows": [dict(errors) for errors in scoped.errors],
        "recipients": list(inline_formset(response, "recipients").non_form_errors()),
    }


def stored(account) -> list[tuple]:
    return list(
        ScopedLimit.objects.filter(account=account)
        .order_by("position")
        .values_list("metric", "period", "window_days", "labels", "warning", "blocked")
    )


@pytest.fixture
def account():
    account = AccountFactory(name="Acme")
    limits_replace(account=account, data={"recipients": {"warning": [PM]}})
    return account


def test_the_page_shows_each_scoped_limit_with_one_field_per_label(admin_client, account):
    # given
    limits_replace(
        account=account,
        data={"recipients": {"warning": [PM]}, "scoped_limits": [DAY_LARGE]},
    )
    # when
    response = admin_client.get(change_url(account))
    # then
    assert response.status_code == 200
    row = inline_formset(response, "scoped_limits").forms[0]
    assert {name: row[name].value() for name in row.fields if name not in ("id", "account")} == {
        "metric": "text_tokens",
        "period": "day",
        "window_days": None,
        "label_technology": None,
        "label_vendor": None,
        "label_operation": None,
        "label_model": "large",
        "warning": 40000,
        "blocked": 50000,
        "DELETE": None,
    }
    assert '<option value="rolling">Rolling window</option>' in response.text
    assert '<option value="text_tokens" selected>Text tokens</option>' in response.text


def test_lines_added_on_the_page_are_stored_in_order_with_who_added_them(
    admin_client, admin_user, account
):
    # when
    response = post_lines(
        admin_client,
        account,
        {"metric": "text_tokens", "period": "day", "label_model": "large", "warning": 40000},
        {"metric": "audio_analyzed_seconds", "period": "rolling", "window_days": 7, "blocked": 60},
    )
    # then
    assert response.status_code == 302, scoped_errors(response)
    assert stored(account) == [
        ("text_tokens", "day", None, {"model": "large"}, 40000, None),
        ("audio_analyzed_seconds", "rolling", 7, {}, None, 60),
    ]
    assert {(r.history_user, r.history_change_reason) for r in ScopedLimit.history.all()} == {
        (admin_user, "admin")
    }


def test_a_line_changed_and_one_deleted_on_the_page_are_stored(admin_client, account):
    # given
    week = {**DAY_LARGE, "period": "week"}
    limits_replace(
        account=account,
        data={"recipients": {"warning": [PM]}, "scoped_limits": [DAY_LARGE, week]},
    )
    data = page_data(admin_client.get(change_url(account)))
    data["scoped_limits-0-blocked"] = "90000"
    data["scoped_limits-1-DELETE"] = "on"
    # when
    response = admin_client.post(change_url(account), data)
    # then
    assert response.status_code == 302, scoped_errors(response)
    assert stored(account) == [("text_tokens", "day", None, {"model": "large"}, 40000, 90000)]


def test_a_scoped_warning_without_warning_recipient_is_refused_and_saves_nothing(admin_client):
    # given
    account = AccountFactory(name="Acme")
    # when
    response = post_lines(
        admin_client,
        account,
        {"metric": "text_tokens", "period": "hour", "warning": 10},
        name="Acme renamed",
    )
    # then
    assert response.status_code == 200
    assert WARNING_RULE in response.text
    assert scoped_errors(response) == {"scoped": [], "rows": [{}], "recipients": [WARNING_RULE]}
    assert not ScopedLimit.objects.exists()
    account.refresh_from_db()
    assert account.name == "Acme"


UNKNOWN_PERIOD = "Select a valid choice. year is not one of the available choices."

REFUSALS = [
    pytest.param(
        {"metric": "text_tokens", "period": "rolling", "blocked": 5},
        {"window_days": ["A rolling period needs a number of days."]},
        id="rolling without days",
    ),
    pytest.param(
        {"metric": "text_tokens", "period": "rolling", "window_days": 400, "blocked": 5},
        {"window_days": ["A rolling window is from 1 to 366 days."]},
        id="rolling too long",
    ),
    pytest.param(
        {"metric": "text_tokens", "period": "day", "window_days": 3, "blocked": 5},
        {"window_days": ["Only a rolling period takes a number of days."]},
        id="days without rolling",
    ),
    pytest.param(
        {"metric": "text_tokens", "period": "day", "label_model": "large model", "blocked": 5},
        {
            "label_model": [
                "The label “model” may only contain letters A-Z and a-z, digits and _ . : / -."
            ]
        },
        id="bad label",
    ),
    pytest.param(
        {"metric": "text_tokens", "period": "month", "blocked": 5},
        {
            "__all__": [
                "A monthly limit of a whole metric is set in “limits”: give labels, or another "
                "period."
            ]
        },
        id="month without labels",
    ),
    pytest.param(
        {"metric": "text_tokens", "period": "day", "warning": 5, "blocked": 5},
        {"warning": [BELOW_RULE]},
        id="warning not below blocked",
    ),
    pytest.param(
        {"metric": "text_tokens", "period": "day", "blocked": -1},
        {"blocked": ["Ensure this value is greater than or equal to 0."]},
        id="negative threshold",
    ),
    pytest.param(
        {"metric": "text_tokens", "period": "day", "blocked": "many"},
        {"blocked": ["Enter a whole number."]},
        id="not a number",
    ),
    pytest.param(
        {"metric": "text_tokens", "period": "year", "blocked": 5},
        {"period": [UNKNOWN_PERIOD]},
        id="unknown period",
    ),
    pytest.param(
        {"period": "day", "blocked": 5},
        {"metric": ["This field is required."]},
        id="no metric",
    ),
]


@pytest.mark.parametrize(("line", "errors"), REFUSALS)
def test_a_broken_line_is_refused_next_to_the_field_that_caused_it(
    admin_client, account, line, errors
):
    # when
    response = post_lines(admin_client, account, line)
    # then
    assert response.status_code == 200
    assert scoped_errors(response) == {"scoped": [], "rows": [errors], "recipients": []}
    for messages in errors.values():
        for message in messages:
            assert escape(message) in response.text
    assert stored(account) == []


def test_the_same_line_twice_is_refused_on_the_later_row(admin_client, account):
    # given
    line = {"metric": "text_tokens", "period": "day", "label_model": "large", "blocked": 5}
    # when
    response = post_lines(admin_client, account, line, {**line, "blocked": 6})
    # then
    assert response.status_code == 200
    assert scoped_errors(response) == {
        "scoped": [],
        "rows": [
            {},
            {
                "__all__": [
                    "This scoped limit is already in the list (same metric, period, window "
                    "days and labels)."
                ]
            },
        ],
        "recipients": [],
    }
    assert stored(account) == []


def test_more_than_fifty_lines_are_refused_above_the_inline(admin_client, account):
    # given
    lines = [
        {"metric": "text_tokens", "period": "rolling", "window_days": days, "blocked": 5}
        for days in range(1, 52)
    ]
    # when
    response = post_lines(admin_client, account, *lines)
    # then
    assert response.status_code == 200
    errors = scoped_errors(response)
    assert errors["scoped"] == ["Ensure this list has at most 50 scoped limits."]
    assert "Ensure this list has at most 50 scoped limits." in response.text
    assert stored(account) == []


def test_the_change_history_shows_scoped_limit_changes(admin_client, account):
    # given
    post_lines(
        admin_client,
        account,
        {"metric": "text_tokens", "period": "day", "label_model": "large", "blocked": 50000},
    )
    data = page_data(admin_client.get(change_url(account)))
    data["scoped_limits-0-blocked"] = "60000"
    admin_client.post(change_url(account), data)
    data = page_data(admin_client.get(change_url(account)))
    data["scoped_limits-0-DELETE"] = "on"
    admin_client.post(change_url(account), data)
    # when
    response = admin_client.get(change_url(account))
    # then
    changes = [
        (c.who, c.what, c.old, c.new, c.reason)
        for c in response.context["limits_history"]["changes"]
    ][:3]
    line = "Text tokens, Day (Model: large)"
    assert changes == [
        ("admin", line, "warning unlimited, blocked 60,000 tokens", "—", "admin"),
        ("admin", f"{line}: blocked threshold", "50,000 tokens", "60,000 tokens", "admin"),
        ("admin", line, "—", "warning unlimited, blocked 50,000 tokens", "admin"),
    ]
    assert "50,000 tokens → 60,000 tokens" in response.text


def test_a_user_who_may_only_view_limits_sees_scoped_limits_read_only(client, account):
    # given
    viewer = UserFactory(is_staff=True)
    viewer.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_account", "view_limit", "view_recipient"])
    )
    client.force_login(viewer)
    limits_replace(
        account=account,
        data={"recipients": {"warning": [PM]}, "scoped_limits": [DAY_LARGE]},
    )
    # when
    response = client.get(change_url(account))
    # then
    assert response.status_code == 200
    assert "scoped_limits-0-warning" not in response.text
    assert "<p>Day</p>" in response.text
    assert "<p>Model: large</p>" in response.text
    assert "<p>40,000 tokens</p>" in response.text
    assert "<p>50,000 tokens</p>" in response.text


def test_a_new_account_is_created_with_its_scoped_limits(admin_client):
    # given
    from django.urls import reverse

    url = reverse("admin:accounts_account_add")
    data = page_data(admin_client.get(url))
    data.update({"name": "Initech", "external_id": "crm-ini", "timezone": "Europe/Paris"})
    add_line(data, metric="text_tokens", period="minute", blocked=100)
    # when
    response = admin_client.post(url, data)
    # then
    assert response.status_code == 302, scoped_errors(response)
    account = Account.objects.get(external_id="crm-ini")
    assert stored(account) == [("text_tokens", "minute", None, {}, None, 100)]
