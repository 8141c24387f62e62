"""``set_limits --period``: one scoped limit set, changed or removed (SPEC section 11.2)."""

from __future__ import annotations

import pytest
from django.core.management.base import CommandError

from accounts.models import Limit, ScopedLimit
from accounts.selectors import limits_document_get
from backoffice.services import limits_replace
from tests.accounts.test_commands import run
from tests.factories import AccountFactory

pytestmark = pytest.mark.django_db

PM = {"email": "pm@example.com", "language": "fr"}


@pytest.fixture
def account():
    account = AccountFactory(name="Acme", external_id="crm-1")
    limits_replace(account=account, data={"recipients": {"warning": [PM]}})
    return account


def lines(account) -> list[dict]:
    return limits_document_get(account=account).as_data()["scoped_limits"]


def state(account) -> tuple:
    """Everything a refused command must leave as it was."""
    return (
        limits_document_get(account=account).as_data(),
        ScopedLimit.history.count(),
        Limit.history.count(),
    )


def test_set_limits_with_a_period_adds_a_scoped_limit_and_prints_it(account):
    # when
    out = run(
        "set_limits", "crm-1", "--metric", "text_tokens", "--period", "day",
        "--label", "model=large", "--label", "vendor=acme", "--warning", "40000",
    )  # fmt: skip
    # then
    assert lines(account) == [
        {
            "metric": "text_tokens",
            "period": "day",
            "window_days": None,
            "labels": {"model": "large", "vendor": "acme"},
            "warning": 40000,
            "blocked": None,
        }
    ]
    assert out == [
        "Limits changed for Acme (crm-1):",
        "metric                     warning  blocked",
        "audio_transcribed_seconds     none     none",
        "audio_analyzed_seconds        none     none",
        "text_tokens                   none     none",
        "warning recipients: pm@example.com (fr)",
        "blocked recipients: none",
        "scoped limits:",
        "metric       period  window_days  labels                   warning  blocked",
        "text_tokens  day     -            model=large;vendor=acme    40000     none",
    ]
    record = ScopedLimit.history.get()
    assert (record.history_user, record.history_change_reason) == (None, "command")


def test_a_threshold_left_out_keeps_its_value_on_an_existing_line(account):
    # given
    run("set_limits", "crm-1", "--metric", "text_tokens", "--period", "rolling",
        "--window-days", "7", "--warning", "10", "--blocked", "20")  # fmt: skip
    # when
    run("set_limits", "crm-1", "--metric", "text_tokens", "--period", "rolling",
        "--window-days", "7", "--blocked", "30")  # fmt: skip
    # then
    assert lines(account) == [
        {
            "metric": "text_tokens",
            "period": "rolling",
            "window_days": 7,
            "labels": {},
            "warning": 10,
            "blocked": 30,
        }
    ]


def test_none_clears_a_threshold_of_a_scoped_limit(account):
    # given
    run("set_limits", "crm-1", "--metric", "text_tokens", "--period", "hour",
        "--warning", "10", "--blocked", "20")  # fmt: skip
    # when
    run("set_limits", "crm-1", "--metric", "text_tokens", "--period", "hour", "--warning", "none")
    # then
    assert [(line["warning"], line["blocked"]) for line in lines(account)] == [(None, 20)]


def test_another_window_or_labels_is_another_line_added_after_the_others(account):
    # given
    run("set_limits", "crm-1", "--metric", "text_tokens", "--period", "rolling",
        "--window-days", "7", "--blocked", "20")  # fmt: skip
    # when
    run("set_limits", "crm-1", "--metric", "text_tokens", "--period", "rolling",
        "--window-days", "30", "--blocked", "50")  # fmt: skip
    run("set_limits", "crm-1", "--metric", "text_tokens", "--period", "rolling",
        "--window-days", "7", "--label", "model=large", "--blocked", "5")  # fmt: skip
    # then
    assert [(line["window_days"], line["labels"], line["blocked"]) for line in lines(account)] == [
        (7, {}, 20),
        (30, {}, 50),
        (7, {"model": "large"}, 5),
    ]


def test_clear_removes_the_line_named_and_keeps_the_others(account):
    # given
    run("set_limits", "crm-1", "--metric", "text_tokens", "--period", "day", "--blocked", "20")
    run("set_limits", "crm-1", "--metric", "text_tokens", "--period", "week", "--blocked", "90")
    # when
    out = run("set_limits", "crm-1", "--metric", "text_tokens", "--period", "day", "--clear")
    # then
    assert [line["period"] for line in lines(account)] == ["week"]
    assert out[0] == "Limits changed for Acme (crm-1):"


def test_without_period_the_monthly_limit_changes_as_before(account):
    # given
    run("set_limits", "crm-1", "--metric", "text_tokens", "--period", "day", "--blocked", "20")
    # when
    run("set_limits", "crm-1", "--metric", "text_tokens", "--blocked", "900")
    # then
    document = limits_document_get(account=account)
    assert document.limits["text_tokens"].blocked == 900
    assert [line["blocked"] for line in lines(account)] == [20]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["--metric", "text_tokens", "--period", "day", "--clear"],
            "The account has no such scoped limit to remove.",
            id="clear of no line",
        ),
        pytest.param(
            ["--metric", "text_tokens", "--period", "day", "--label", "model=x", "--clear"],
            "The account has no such scoped limit to remove.",
            id="clear of other labels",
        ),
        pytest.param(
            ["--metric", "text_tokens", "--period", "year", "--blocked", "5"],
            "scoped_limits.1.period: “year” is not a valid period. Expected one of: month, "
            "week, day, hour, minute, rolling.",
            id="unknown period",
        ),
        pytest.param(
            ["--metric", "text_tokens", "--period", "rolling", "--blocked", "5"],
            "scoped_limits.1.window_days: A rolling period needs a number of days.",
            id="rolling without days",
        ),
        pytest.param(
            [
                "--metric",
                "text_tokens",
                "--period",
                "rolling",
                "--window-days",
                "a week",
                "--blocked",
                "5",
            ],
            "scoped_limits.1.window_days: A valid integer is required.",
            id="days not a number",
        ),
        pytest.param(
            ["--metric", "text_tokens", "--period", "day", "--window-days", "3", "--blocked", "5"],
            "scoped_limits.1.window_days: Only a rolling period takes a number of days.",
            id="days without rolling",
        ),
        pytest.param(
            ["--metric", "text_tokens", "--period", "month", "--blocked", "5"],
            "scoped_limits.1.labels: A monthly limit of a whole metric is set in “limits”: "
            "give labels, or another period.",
            id="month without labels",
        ),
        pytest.param(
            ["--metric", "text_tokens", "--period", "day", "--warning", "9", "--blocked", "9"],
            "scoped_limits.1.warning: The warning threshold must be lower than the blocked "
            "threshold.",
            id="warning not below blocked",
        ),
        pytest.param(
            ["--metric", "text_tokens", "--period", "day", "--blocked", "-1"],
            "scoped_limits.1.blocked: Ensure this value is greater than or equal to 0.",
            id="negative",
        ),
        pytest.param(
            ["--metric", "text_tokens", "--period", "day", "--blocked", "lots"],
            "scoped_limits.1.blocked: A valid integer is required.",
            id="not a number",
        ),
        pytest.param(
            ["--metric", "nope", "--period", "day", "--blocked", "5"],
            "scoped_limits.1.metric: Unknown metric. Expected one of: audio_transcribed_seconds,"
            " audio_analyzed_seconds, text_tokens.",
            id="unknown metric",
        ),
        pytest.param(
            [
                "--metric",
                "text_tokens",
                "--period",
                "day",
                "--label",
                "region=eu",
                "--blocked",
                "5",
            ],
            "--label region: “region” is not a known label. Expected one of: technology, "
            "vendor, operation, model.",
            id="unknown label",
        ),
        pytest.param(
            ["--metric", "text_tokens", "--period", "day", "--label", "model", "--blocked", "5"],
            "--label: “model” is not a label: use KEY=VALUE, e.g. model=large.",
            id="label without value",
        ),
        pytest.param(
            [
                "--metric",
                "text_tokens",
                "--period",
                "day",
                "--label",
                "model=a",
                "--label",
                "model=b",
                "--blocked",
                "5",
            ],
            "--label model: The label “model” is given more than once.",
            id="label twice",
        ),
        pytest.param(
            ["--metric", "text_tokens", "--period", "day", "--clear", "--blocked", "5"],
            "--clear takes no --warning or --blocked.",
            id="clear with a threshold",
        ),
        pytest.param(
            ["--metric", "text_tokens", "--label", "model=a", "--blocked", "5"],
            "--window-days, --label and --clear need --period.",
            id="label without period",
        ),
        pytest.param(
            ["--metric", "text_tokens", "--clear"],
            "--window-days, --label and --clear need --period.",
            id="clear without period",
        ),
        pytest.param(
            ["--period", "day", "--blocked", "5"],
            "--metric is required with --warning or --blocked.",
            id="no metric",
        ),
        pytest.param(
            ["--metric", "text_tokens", "--period", "day"],
            "Nothing to change: give --warning or --blocked with --metric, "
            "or --warning-recipient or --blocked-recipient.",
            id="nothing to change",
        ),
        pytest.param(
            [
                "--metric",
                "text_tokens",
                "--period",
                "day",
                "--warning",
                "5",
                "--warning-recipient",
                "none",
            ],
            "recipients.warning: At least one warning recipient is required when a warning "
            "threshold is set.",
            id="warning without recipient",
        ),
    ],
)
def test_a_refused_scoped_limit_prints_one_line_and_changes_nothing(account, args, message):
    # given: one line already, so that a new one is index 1
    run("set_limits", "crm-1", "--metric", "text_tokens", "--period", "week", "--blocked", "90")
    before = state(account)
    # when
    with pytest.raises(CommandError) as refused:
        run("set_limits", "crm-1", *args)
    # then
    assert str(refused.value) == message
    assert "\n" not in str(refused.value)
    assert state(account) == before


def test_period_without_metric_is_refused(account):
    with pytest.raises(CommandError, match=r"^--metric is required with --period\.$"):
        run("set_limits", "crm-1", "--period", "day", "--warning-recipient", "a@example.com")


def test_a_scoped_limit_of_an_account_not_on_enterprise_is_refused():
    # given
    AccountFactory(external_id="crm-pro", plan="pro")
    # when / then
    with pytest.raises(
        CommandError, match=r"^Limits can only be defined for an Enterprise account\.$"
    ):
        run("set_limits", "crm-pro", "--metric", "text_tokens", "--period", "day", "--blocked", "5")
    assert not ScopedLimit.objects.exists()
