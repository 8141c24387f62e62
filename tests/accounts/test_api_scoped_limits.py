"""Scoped limits in the limits document (SPEC sections 5 and 11.2): read, replace, merge,
refuse with the messages of section 3 keyed by ``scoped_limits.<index>.<field>``."""

from __future__ import annotations

import pytest

from accounts.models import Plan, ScopedLimit
from accounts.selectors import LimitLine, limit_lines
from accounts.services import AccountNotEnterprise
from accounts.windows import PeriodKind
from backoffice.services import limits_replace
from tests.factories import AccountFactory, LimitFactory

pytestmark = pytest.mark.django_db

WARNING_RULE = "At least one warning recipient is required when a warning threshold is set."
BELOW_RULE = "The warning threshold must be lower than the blocked threshold."
UNLIMITED = {"warning": None, "blocked": None}
EVERY_METRIC_UNLIMITED = {
    "audio_transcribed_seconds": UNLIMITED,
    "audio_analyzed_seconds": UNLIMITED,
    "text_tokens": UNLIMITED,
}
PM = {"email": "pm@example.com", "language": "en"}
DAY_LARGE = {
    "metric": "text_tokens",
    "period": "day",
    "window_days": None,
    "labels": {"model": "large"},
    "warning": 40000,
    "blocked": 50000,
}
ROLLING_WEEK = {
    "metric": "audio_transcribed_seconds",
    "period": "rolling",
    "window_days": 7,
    "labels": {},
    "warning": None,
    "blocked": 3600,
}


def limits_url(account) -> str:
    return f"/api/v1/accounts/{account.pk}/limits/"


def stored_lines(account) -> list[tuple]:
    return list(
        ScopedLimit.objects.filter(account=account)
        .order_by("position")
        .values_list(
            "metric", "period", "window_days", "labels", "labels_key", "warning", "blocked"
        )
    )


def document(account, body, *, scoped_limits, recipients=None, limits=None) -> dict:
    return {
        "account": str(account.pk),
        "limits": limits or EVERY_METRIC_UNLIMITED,
        "recipients": recipients or {"warning": [PM], "blocked": []},
        "scoped_limits": scoped_limits,
        "updated_at": body["updated_at"],
    }


@pytest.fixture
def account():
    return AccountFactory()


@pytest.fixture
def scoped_account(manager_client, account):
    response = manager_client.put(
        limits_url(account),
        {"recipients": {"warning": [PM]}, "scoped_limits": [DAY_LARGE, ROLLING_WEEK]},
        format="json",
    )
    assert response.status_code == 200
    return account


# --- Reading, replacing, merging ---


def test_put_stores_scoped_limits_and_get_lists_them_in_the_order_given(manager_client, account):
    # when
    put = manager_client.put(
        limits_url(account),
        {"recipients": {"warning": [PM]}, "scoped_limits": [ROLLING_WEEK, DAY_LARGE]},
        format="json",
    )
    get = manager_client.get(limits_url(account))
    # then
    assert put.status_code == 200
    assert put.json() == document(account, put.json(), scoped_limits=[ROLLING_WEEK, DAY_LARGE])
    assert get.json() == put.json()
    assert stored_lines(account) == [
        ("audio_transcribed_seconds", "rolling", 7, {}, "", None, 3600),
        ("text_tokens", "day", None, {"model": "large"}, "model=large", 40000, 50000),
    ]


def test_an_item_may_leave_out_window_days_labels_and_thresholds(manager_client, account):
    # when
    response = manager_client.put(
        limits_url(account),
        {"scoped_limits": [{"metric": "text_tokens", "period": "hour"}]},
        format="json",
    )
    # then
    assert response.status_code == 200
    assert response.json()["scoped_limits"] == [
        {
            "metric": "text_tokens",
            "period": "hour",
            "window_days": None,
            "labels": {},
            "warning": None,
            "blocked": None,
        }
    ]


def test_labels_are_stored_under_their_canonical_key(manager_client, account):
    # when
    response = manager_client.put(
        limits_url(account),
        {
            "scoped_limits": [
                {
                    "metric": "text_tokens",
                    "period": "month",
                    "labels": {"vendor": "acme", "model": "large"},
                    "blocked": 10,
                }
            ]
        },
        format="json",
    )
    # then
    assert response.status_code == 200
    assert response.json()["scoped_limits"][0]["labels"] == {"model": "large", "vendor": "acme"}
    assert ScopedLimit.objects.get().labels_key == "model=large;vendor=acme"


def test_put_without_scoped_limits_removes_them(manager_client, scoped_account):
    # when
    response = manager_client.put(
        limits_url(scoped_account), {"recipients": {"warning": [PM]}}, format="json"
    )
    # then
    assert response.status_code == 200
    assert response.json() == document(scoped_account, response.json(), scoped_limits=[])
    assert stored_lines(scoped_account) == []


@pytest.mark.parametrize("body", [{"limits": {"text_tokens": {"blocked": 5}}}, {}])
def test_patch_without_scoped_limits_keeps_them(manager_client, scoped_account, body):
    # when
    response = manager_client.patch(limits_url(scoped_account), body, format="json")
    # then
    assert response.status_code == 200
    assert response.json()["scoped_limits"] == [DAY_LARGE, ROLLING_WEEK]
    assert len(stored_lines(scoped_account)) == 2


def test_patch_with_scoped_limits_replaces_them_all(manager_client, scoped_account):
    # given
    changed = {**DAY_LARGE, "warning": None, "blocked": 60000}
    # when
    response = manager_client.patch(
        limits_url(scoped_account), {"scoped_limits": [changed]}, format="json"
    )
    # then
    assert response.status_code == 200
    assert response.json() == document(scoped_account, response.json(), scoped_limits=[changed])
    assert stored_lines(scoped_account) == [
        ("text_tokens", "day", None, {"model": "large"}, "model=large", None, 60000),
    ]


def test_patch_with_null_scoped_limits_removes_them(manager_client, scoped_account):
    # when
    response = manager_client.patch(
        limits_url(scoped_account), {"scoped_limits": None}, format="json"
    )
    # then
    assert response.status_code == 200
    assert response.json()["scoped_limits"] == []
    assert stored_lines(scoped_account) == []


def test_a_line_kept_keeps_its_row_and_a_reorder_keeps_both(manager_client, scoped_account):
    # given
    ids = dict(ScopedLimit.objects.values_list("period", "pk"))
    # when
    response = manager_client.put(
        limits_url(scoped_account),
        {"recipients": {"warning": [PM]}, "scoped_limits": [ROLLING_WEEK, DAY_LARGE]},
        format="json",
    )
    # then
    assert response.json()["scoped_limits"] == [ROLLING_WEEK, DAY_LARGE]
    assert dict(ScopedLimit.objects.values_list("period", "pk")) == ids


def test_the_answer_of_a_get_may_be_sent_back_as_it_is(manager_client, scoped_account):
    # given
    before = manager_client.get(limits_url(scoped_account)).json()
    # when
    response = manager_client.put(limits_url(scoped_account), before, format="json")
    # then
    assert response.status_code == 200
    assert response.json() == before


# --- Refusals: each rule, its message and its field path ---


def _line(**fields) -> dict:
    return {**DAY_LARGE, **fields}


REFUSALS = [
    pytest.param(
        [_line(metric="video_seconds")],
        {
            "0": {
                "metric": [
                    "Unknown metric. Expected one of: audio_transcribed_seconds, "
                    "audio_analyzed_seconds, text_tokens."
                ]
            }
        },
        id="unknown metric",
    ),
    pytest.param(
        [_line(metric=["text_tokens"])],
        {
            "0": {
                "metric": [
                    "Unknown metric. Expected one of: audio_transcribed_seconds, "
                    "audio_analyzed_seconds, text_tokens."
                ]
            }
        },
        id="metric not a string",
    ),
    pytest.param(
        [{k: v for k, v in DAY_LARGE.items() if k != "metric"}],
        {"0": {"metric": ["This field is required."]}},
        id="metric left out",
    ),
    pytest.param(
        [_line(metric=None)], {"0": {"metric": ["This field may not be null."]}}, id="null metric"
    ),
    pytest.param(
        [_line(period="year")],
        {
            "0": {
                "period": [
                    "“year” is not a valid period. Expected one of: month, week, day, hour, "
                    "minute, rolling."
                ]
            }
        },
        id="unknown period",
    ),
    pytest.param(
        [{k: v for k, v in DAY_LARGE.items() if k != "period"}],
        {"0": {"period": ["This field is required."]}},
        id="period left out",
    ),
    pytest.param(
        [_line(period=None)], {"0": {"period": ["This field may not be null."]}}, id="null period"
    ),
    pytest.param(
        [_line(period="rolling")],
        {"0": {"window_days": ["A rolling period needs a number of days."]}},
        id="rolling without days",
    ),
    pytest.param(
        [_line(period="rolling", window_days=367)],
        {"0": {"window_days": ["A rolling window is from 1 to 366 days."]}},
        id="rolling too long",
    ),
    pytest.param(
        [_line(period="rolling", window_days=0)],
        {"0": {"window_days": ["A rolling window is from 1 to 366 days."]}},
        id="rolling of no day",
    ),
    pytest.param(
        [_line(period="rolling", window_days="7")],
        {"0": {"window_days": ["A valid integer is required."]}},
        id="days not an integer",
    ),
    pytest.param(
        [_line(window_days=7)],
        {"0": {"window_days": ["Only a rolling period takes a number of days."]}},
        id="days without rolling",
    ),
    pytest.param(
        [_line(labels={"region": "eu"})],
        {
            "0": {
                "labels": {
                    "region": [
                        "“region” is not a known label. Expected one of: technology, vendor, "
                        "operation, model."
                    ]
                }
            }
        },
        id="unknown label",
    ),
    pytest.param(
        [_line(labels={"model": "large model"})],
        {
            "0": {
                "labels": {
                    "model": [
                        "The label “model” may only contain letters A-Z and a-z, digits "
                        "and _ . : / -."
                    ]
                }
            }
        },
        id="bad label value",
    ),
    pytest.param(
        [_line(labels={"model": ""})],
        {"0": {"labels": {"model": ["The label “model” may not be blank."]}}},
        id="blank label value",
    ),
    pytest.param(
        [_line(labels={"model": "x" * 65})],
        {"0": {"labels": {"model": ["Ensure the label “model” has no more than 64 characters."]}}},
        id="label value too long",
    ),
    pytest.param(
        [_line(labels={"model": 3})],
        {"0": {"labels": {"model": ["The label “model” takes a string."]}}},
        id="label value not a string",
    ),
    pytest.param(
        [_line(labels=["model=large"])],
        {"0": {"labels": ["Expected an object of labels, e.g. {“model”: “large”}."]}},
        id="labels not an object",
    ),
    pytest.param(
        [_line(period="month", labels={})],
        {
            "0": {
                "labels": [
                    "A monthly limit of a whole metric is set in “limits”: give labels, or "
                    "another period."
                ]
            }
        },
        id="month without labels",
    ),
    pytest.param(
        [_line(warning=50000, blocked=50000)],
        {"0": {"warning": [BELOW_RULE]}},
        id="warning not below blocked",
    ),
    pytest.param(
        [_line(blocked=-1)],
        {"0": {"blocked": ["Ensure this value is greater than or equal to 0."]}},
        id="negative threshold",
    ),
    pytest.param(
        [_line(warning="10")],
        {"0": {"warning": ["A valid integer is required."]}},
        id="threshold not an integer",
    ),
    pytest.param(
        [_line(blocked=10**15 + 1)],
        {"0": {"blocked": ["Ensure this value is less than or equal to 1000000000000000."]}},
        id="threshold too large",
    ),
    pytest.param(
        [_line(level="warning")], {"0": {"level": ["Unknown field."]}}, id="unknown field"
    ),
    pytest.param(
        [DAY_LARGE, ROLLING_WEEK, _line(warning=None, blocked=1)],
        {
            "2": {
                "non_field_errors": [
                    "This scoped limit is already in the list (same metric, period, window "
                    "days and labels)."
                ]
            }
        },
        id="duplicate line",
    ),
    pytest.param(
        ["day"],
        {
            "0": {
                "non_field_errors": [
                    "Expected an object with “metric”, “period”, “labels” and thresholds."
                ]
            }
        },
        id="item not an object",
    ),
]


@pytest.mark.parametrize(("scoped_limits", "errors"), REFUSALS)
@pytest.mark.parametrize("method", ["put", "patch"])
def test_a_broken_scoped_limit_is_refused_with_its_field_path(
    manager_client, scoped_account, method, scoped_limits, errors
):
    # given
    before = stored_lines(scoped_account)
    # when
    response = getattr(manager_client, method)(
        limits_url(scoped_account),
        {"recipients": {"warning": [PM]}, "scoped_limits": scoped_limits},
        format="json",
    )
    # then
    assert response.status_code == 400
    assert response.json() == {"scoped_limits": errors}
    assert stored_lines(scoped_account) == before


def test_several_broken_lines_are_all_reported(manager_client, account):
    # when
    response = manager_client.put(
        limits_url(account),
        {
            "scoped_limits": [
                _line(period="week", window_days=3, warning=9, blocked=9),
                ROLLING_WEEK,
                _line(metric="nope", labels={"vendor": "a b"}),
            ]
        },
        format="json",
    )
    # then
    assert response.status_code == 400
    assert response.json() == {
        "scoped_limits": {
            "0": {
                "window_days": ["Only a rolling period takes a number of days."],
                "warning": [BELOW_RULE],
            },
            "2": {
                "metric": [
                    "Unknown metric. Expected one of: audio_transcribed_seconds, "
                    "audio_analyzed_seconds, text_tokens."
                ],
                "labels": {
                    "vendor": [
                        "The label “vendor” may only contain letters A-Z and a-z, digits "
                        "and _ . : / -."
                    ]
                },
            },
        }
    }
    assert stored_lines(account) == []


def test_a_scoped_warning_needs_a_warning_recipient(manager_client, account):
    # when
    response = manager_client.put(
        limits_url(account), {"scoped_limits": [DAY_LARGE]}, format="json"
    )
    # then
    assert response.status_code == 400
    assert response.json() == {"recipients": {"warning": [WARNING_RULE]}}
    assert stored_lines(account) == []


def test_emptying_the_warning_list_under_a_scoped_warning_is_refused(
    manager_client, scoped_account
):
    # when
    response = manager_client.patch(
        limits_url(scoped_account), {"recipients": {"warning": []}}, format="json"
    )
    # then
    assert response.status_code == 400
    assert response.json() == {"recipients": {"warning": [WARNING_RULE]}}
    assert len(stored_lines(scoped_account)) == 2


def test_a_scoped_blocked_threshold_needs_no_recipient(manager_client, account):
    # when
    response = manager_client.put(
        limits_url(account), {"scoped_limits": [ROLLING_WEEK]}, format="json"
    )
    # then
    assert response.status_code == 200
    assert response.json() == document(
        account,
        response.json(),
        scoped_limits=[ROLLING_WEEK],
        recipients={"warning": [], "blocked": []},
    )


def _distinct_lines(count: int) -> list[dict]:
    return [
        {"metric": "text_tokens", "period": "rolling", "window_days": days, "blocked": 10}
        for days in range(1, count + 1)
    ]


def test_fifty_scoped_limits_are_accepted(manager_client, account):
    # when
    response = manager_client.put(
        limits_url(account), {"scoped_limits": _distinct_lines(50)}, format="json"
    )
    # then
    assert response.status_code == 200
    assert len(response.json()["scoped_limits"]) == 50
    assert ScopedLimit.objects.count() == 50


def test_more_than_fifty_scoped_limits_are_refused(manager_client, account):
    # when
    response = manager_client.put(
        limits_url(account), {"scoped_limits": _distinct_lines(51)}, format="json"
    )
    # then
    assert response.status_code == 400
    assert response.json() == {"scoped_limits": ["Ensure this list has at most 50 scoped limits."]}
    assert not ScopedLimit.objects.exists()


@pytest.mark.parametrize("value", [{}, "day", 3])
def test_scoped_limits_that_are_not_a_list_are_refused(manager_client, account, value):
    # when
    response = manager_client.put(limits_url(account), {"scoped_limits": value}, format="json")
    # then
    assert response.status_code == 400
    assert response.json() == {"scoped_limits": ["Expected a list of scoped limits."]}


def test_a_scoped_limit_of_an_account_not_on_enterprise_answers_409(manager_client):
    # given
    account = AccountFactory(plan="pro")
    # when
    response = manager_client.put(
        limits_url(account), {"scoped_limits": [ROLLING_WEEK]}, format="json"
    )
    # then
    assert response.status_code == 409
    assert not ScopedLimit.objects.exists()


def test_a_change_of_scoped_limits_is_recorded_with_who_and_why(manager_client, manager, account):
    # when
    manager_client.put(limits_url(account), {"scoped_limits": [ROLLING_WEEK]}, format="json")
    manager_client.patch(
        limits_url(account),
        {"scoped_limits": [{**ROLLING_WEEK, "blocked": 7200}]},
        format="json",
    )
    # then
    records = list(ScopedLimit.history.order_by("history_id"))
    assert [
        (r.history_type, r.blocked, r.history_user, r.history_change_reason) for r in records
    ] == [
        ("+", 3600, manager, "api"),
        ("~", 7200, manager, "api"),
    ]
    account.refresh_from_db()
    assert account.limits_updated_at is not None


# --- limit_lines ---


def test_limit_lines_are_the_monthly_lines_then_the_scoped_ones(
    scoped_account, django_assert_num_queries
):
    # given
    LimitFactory(account=scoped_account, metric="text_tokens", warning=None, blocked=900)
    ids = list(ScopedLimit.objects.order_by("position").values_list("pk", flat=True))
    # when
    with django_assert_num_queries(2):
        lines = limit_lines(account=scoped_account)
    # then
    assert lines == [
        LimitLine("audio_transcribed_seconds", PeriodKind.MONTH, None, {}, None, None, None),
        LimitLine("audio_analyzed_seconds", PeriodKind.MONTH, None, {}, None, None, None),
        LimitLine("text_tokens", PeriodKind.MONTH, None, {}, None, 900, None),
        LimitLine("text_tokens", PeriodKind.DAY, None, {"model": "large"}, 40000, 50000, ids[0]),
        LimitLine("audio_transcribed_seconds", PeriodKind.ROLLING, 7, {}, None, 3600, ids[1]),
    ]


# --- An account not on Enterprise keeps its scoped limits, inactive ---


def test_an_account_off_enterprise_may_keep_or_remove_scoped_limits_but_not_add_any(account):
    # given: a scoped limit set while on Enterprise, then the account moved to Pro
    limits_replace(account=account, data={"scoped_limits": [ROLLING_WEEK]})
    account.plan = Plan.PRO
    account.save()
    # when / then: keeping it, lowering nothing, is allowed
    kept = limits_replace(account=account, data={"scoped_limits": [ROLLING_WEEK]})
    assert kept.as_data()["scoped_limits"] == [ROLLING_WEEK]
    # adding or changing one is refused
    with pytest.raises(AccountNotEnterprise):
        limits_replace(
            account=account, data={"scoped_limits": [ROLLING_WEEK, {**DAY_LARGE, "warning": None}]}
        )
    with pytest.raises(AccountNotEnterprise):
        limits_replace(account=account, data={"scoped_limits": [{**ROLLING_WEEK, "blocked": 1}]})
    # removing it is allowed
    removed = limits_replace(account=account, data={"scoped_limits": []})
    assert removed.as_data()["scoped_limits"] == []
    assert stored_lines(account) == []
