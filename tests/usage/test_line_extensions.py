"""Extensions on any limit line, for the line's current period (SPEC 4, 11.3, 11.4, 11.5).

The account of ``test_api_capacities`` (a daily, a rolling, an hourly and a weekly line
beside the monthly ones, usage known to the unit) gets extensions granted through the
account page, as a manager would; capacities, the pre-flight check and the report are then
asserted whole. The clock is fixed at instants named in each test (Paris local time).
"""

from __future__ import annotations

import io
import json
import re
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
import time_machine
from django.contrib.admin.models import LogEntry
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.urls import reverse

from accounts.models import ScopedLimit
from tests.accounts.test_admin import page_data
from tests.factories import AccountFactory, UserFactory
from tests.usage.test_admin import add_extension, extension_errors
from tests.usage.test_api_capacities import NOW, account_with_lines, check, monthly, scoped
from usage.models import Extension
from usage.periods import Period
from usage.services import extension_grant

pytestmark = pytest.mark.django_db

DAY = "Text tokens, Day (Model: large)"
ROLLING = "Text tokens, Rolling window of 7 days"
HOUR = "Text tokens, Hour (Vendor: acme)"
MONTH = "Text tokens, Calendar month"


@pytest.fixture
def account(manager_client, service_client):
    return account_with_lines(manager_client, service_client)


def change_url(account):
    return reverse("admin:accounts_account_change", args=[account.pk])


def grant(client, account, line, amount, reason="Launch"):
    """Grant an extension on the account page, choosing the line by its words."""
    page = client.get(change_url(account))
    data = page_data(page)
    add_extension(data, page, line, amount, reason)
    return client.post(change_url(account), data)


def line(account, period):
    return ScopedLimit.objects.get(account=account, period=period)


@pytest.fixture
def extended(account, admin_client):
    """The account with extensions granted now on four lines, and older ones that no longer
    count: the daily line's of yesterday, the rolling line's of yesterday's window, the
    hourly line's of the hour before."""
    with time_machine.travel(NOW, tick=False):
        for words, amount in ((DAY, 10000), (ROLLING, 3000), (HOUR, 29500), (MONTH, 500)):
            response = grant(admin_client, account, words, amount)
            assert response.status_code == 302, extension_errors(response)
    for period, start in (
        ("day", "2026-12-01T00:00:00+01:00"),
        ("rolling", "2026-12-01T00:00:00+01:00"),
        ("hour", "2026-12-02T14:00:00+01:00"),
    ):
        scoped_limit = line(account, period)
        Extension.objects.create(
            account=account,
            metric="text_tokens",
            scoped_limit=scoped_limit,
            period=datetime.fromisoformat(start).date(),
            period_start=datetime.fromisoformat(start),
            amount=99999,
            reason="Before",
        )
    return account


def capacities(client, account, at=NOW):
    with time_machine.travel(at, tick=False):
        response = client.get(f"/api/v1/accounts/{account.pk}/capacities/")
    assert response.status_code == 200
    return response.json()


def test_capacities_count_each_line_s_extensions_of_its_current_period(extended, service_client):
    # when
    body = capacities(service_client, extended)
    # then: the hourly line, blocked at 30000 of 1000, is lifted by 29500 to 500 left
    assert body == {
        "account": str(extended.pk),
        "has_remaining_capacity": True,
        "items": [
            monthly("audio_transcribed_seconds", "seconds"),
            monthly("audio_analyzed_seconds", "seconds"),
            monthly("text_tokens", "tokens", 42100, 800000, 1000000, 958400, extension=500),
            scoped(
                "text_tokens", "tokens", {"model": "large"}, "day", None,
                "2026-12-02T00:00:00+01:00", "2026-12-03T00:00:00+01:00",
                42000, 40000, 50000, 18000, "warning", extension=10000,
            ),
            scoped(
                "text_tokens", "tokens", {}, "rolling", 7,
                "2026-11-26T00:00:00+01:00", "2026-12-03T00:00:00+01:00",
                47100, None, 100000, 55900, "ok", extension=3000,
            ),
            scoped(
                "text_tokens", "tokens", {"vendor": "acme"}, "hour", None,
                "2026-12-02T15:00:00+01:00", "2026-12-02T16:00:00+01:00",
                30000, None, 1000, 500, "ok", extension=29500,
            ),
            scoped(
                "audio_transcribed_seconds", "seconds", {}, "week", None,
                "2026-11-30T00:00:00+01:00", "2026-12-07T00:00:00+01:00",
                120.5, None, 3600, 3479.5, "ok",
            ),
        ],
    }  # fmt: skip


def test_check_allows_up_to_each_line_s_effective_blocked_threshold(extended, service_client):
    # when: exactly what the extended daily line has left
    fits = check(
        service_client,
        extended,
        {"metric": "text_tokens", "quantity": 18000, "labels": {"model": "large"}},
    )
    one_more = check(
        service_client,
        extended,
        {"metric": "text_tokens", "quantity": 18001, "labels": {"model": "large"}},
    )
    # then
    assert fits.status_code == 200
    assert fits.json() == {
        "allowed": True,
        "metric": "text_tokens",
        "used": 42100,
        "remaining": 18000,
        "status": "warning",
        "lines": [
            {"period": "month", "window_days": None, "labels": {}, "used": 42100,
             "remaining": 958400, "status": "ok", "allowed": True},
            {"period": "day", "window_days": None, "labels": {"model": "large"}, "used": 42000,
             "remaining": 18000, "status": "warning", "allowed": True},
            {"period": "rolling", "window_days": 7, "labels": {}, "used": 47100,
             "remaining": 55900, "status": "ok", "allowed": True},
        ],
    }  # fmt: skip
    assert one_more.status_code == 200
    assert one_more.json() == {
        "allowed": False,
        "metric": "text_tokens",
        "used": 42100,
        "remaining": 18000,
        "status": "warning",
        "lines": [
            {"period": "month", "window_days": None, "labels": {}, "used": 42100,
             "remaining": 958400, "status": "ok", "allowed": True},
            {"period": "day", "window_days": None, "labels": {"model": "large"}, "used": 42000,
             "remaining": 18000, "status": "warning", "allowed": False},
            {"period": "rolling", "window_days": 7, "labels": {}, "used": 47100,
             "remaining": 55900, "status": "ok", "allowed": True},
        ],
    }  # fmt: skip


def test_check_of_zero_passes_a_blocked_line_lifted_by_an_extension(extended, service_client):
    # when
    response = check(
        service_client,
        extended,
        {"metric": "text_tokens", "quantity": 0, "labels": {"vendor": "acme", "model": "x"}},
    )
    # then
    assert response.status_code == 200
    assert response.json() == {
        "allowed": True,
        "metric": "text_tokens",
        "used": 42100,
        "remaining": 500,
        "status": "ok",
        "lines": [
            {"period": "month", "window_days": None, "labels": {}, "used": 42100,
             "remaining": 958400, "status": "ok", "allowed": True},
            {"period": "rolling", "window_days": 7, "labels": {}, "used": 47100,
             "remaining": 55900, "status": "ok", "allowed": True},
            {"period": "hour", "window_days": None, "labels": {"vendor": "acme"},
             "used": 30000, "remaining": 500, "status": "ok", "allowed": True},
        ],
    }  # fmt: skip


def figures(body):
    """(period, extension, is_extended, remaining) of each text_tokens line."""
    return [
        (item["current_period"]["period"], item["extension"], item["is_extended"],
         item["remaining"])
        for item in body["items"]
        if item["metric"] == "text_tokens"
    ]  # fmt: skip


def test_an_extension_stops_counting_when_its_line_s_window_moves_on(extended, service_client):
    # when: the last second of 2 December in Paris, then the first of 3 December
    last_second = capacities(
        service_client, extended, datetime(2026, 12, 2, 22, 59, 59, tzinfo=UTC)
    )
    next_day = capacities(service_client, extended, datetime(2026, 12, 2, 23, 0, tzinfo=UTC))
    # then: a new hour has no extension; the day and the rolling window keep theirs to the
    # end of the day, and lose them at local midnight; the month keeps its own
    assert figures(last_second) == [
        ("month", 500, True, 958400),
        ("day", 10000, True, 18000),
        ("rolling", 3000, True, 55900),
        ("hour", 0, False, 1000),
    ]
    assert figures(next_day) == [
        ("month", 500, True, 958400),
        ("day", 0, False, 50000),
        ("rolling", 0, False, 52900),
        ("hour", 0, False, 1000),
    ]


def test_the_usage_report_shows_each_line_s_extension(extended):
    # when
    out = io.StringIO()
    with time_machine.travel(NOW, tick=False):
        call_command("usage_report", str(extended.pk), "--format", "json", stdout=out)
    # then
    rows = json.loads(out.getvalue())
    assert [
        (row["period_kind"], row["metric"], row["extension"], row["remaining"], row["status"])
        for row in rows
    ] == [
        ("month", "audio_transcribed_seconds", 0, None, "ok"),
        ("month", "audio_analyzed_seconds", 0, None, "ok"),
        ("month", "text_tokens", 500, 958400, "ok"),
        ("day", "text_tokens", 10000, 18000, "warning"),
        ("rolling", "text_tokens", 3000, 55900, "ok"),
        ("hour", "text_tokens", 29500, 500, "ok"),
        ("week", "audio_transcribed_seconds", 0, 3479.5, "ok"),
    ]


def test_a_grant_on_the_account_page_is_stored_for_the_line_s_current_period(
    account, admin_client, admin_user
):
    # when
    with time_machine.travel(NOW, tick=False):
        response = grant(admin_client, account, ROLLING, 3000, "  Launch week ")
        page = admin_client.get(change_url(account))
    # then: the rolling window's period is its last day, today
    assert response.status_code == 302
    assert list(
        Extension.objects.values_list(
            "metric", "scoped_limit", "period", "period_start", "amount", "reason", "granted_by"
        )
    ) == [
        (
            "text_tokens",
            line(account, "rolling").pk,
            datetime(2026, 12, 2).date(),
            datetime(2026, 12, 1, 23, 0, tzinfo=UTC),
            3000,
            "Launch week",
            admin_user.pk,
        )
    ]
    assert LogEntry.objects.get(object_id=str(account.pk)).get_change_message() == (
        f"Added extension “{ROLLING}: +3000 tokens (Dec. 2, 2026, midnight (Europe/Paris))”."
    )
    inline = page.text[page.text.index('id="extensions-group"') :]
    inline = inline[: inline.index('id="extensions-empty"')]
    cells = re.findall(r'<td class="field-(line|period_display)">\s*<p>([^<]*)</p>', inline)
    assert cells == [("line", ROLLING), ("period_display", "Dec. 2, 2026, midnight (Europe/Paris)")]


def test_a_line_without_blocked_threshold_is_refused_on_its_row(account, admin_client):
    # given: a weekly line with a warning threshold only
    ScopedLimit.objects.create(
        account=account, metric="text_tokens", period="week", labels={}, warning=10, position=9
    )
    # when
    with time_machine.travel(NOW, tick=False):
        response = grant(admin_client, account, "Text tokens, Week", 100)
    # then
    assert response.status_code == 200
    assert extension_errors(response) == [
        {
            "line": [
                "This line has no blocked threshold: an extension raises the blocked "
                "threshold, so set one first."
            ]
        }
    ]
    assert not Extension.objects.exists()


def refusal(**grant):
    with time_machine.travel(NOW, tick=False), pytest.raises(ValidationError) as refused:
        extension_grant(amount=100, reason="Launch", actor=None, **grant)
    assert not Extension.objects.exists()
    return refused.value.message_dict


NOT_CURRENT = {
    "period": ["An extension of a scoped limit can only be granted for the line's current period."]
}


def test_an_extension_of_another_period_of_a_line_is_refused(account):
    day = line(account, "day").pk
    paris = ZoneInfo("Europe/Paris")
    # yesterday, tomorrow, this month (a month is not the daily line's period)
    for other in ("2026-12-01T00:00:00+01:00", "2026-12-03T00:00:00+01:00"):
        start = datetime.fromisoformat(other)
        assert refusal(account=account, scoped_limit_id=day, period_start=start) == NOT_CURRENT
    assert refusal(account=account, scoped_limit_id=day, period=Period(2026, 12, paris)) == (
        NOT_CURRENT
    )
    # the current period, named, is granted
    with time_machine.travel(NOW, tick=False):
        extension = extension_grant(
            account=account,
            scoped_limit_id=day,
            period_start=datetime.fromisoformat("2026-12-02T00:00:00+01:00"),
            amount=1,
            reason="Today",
            actor=UserFactory(),
        )
    assert extension.period_key == "2026-12-02T00:00:00+01:00"


def test_an_extension_on_a_line_of_another_account_or_of_another_metric_is_refused(account):
    other = AccountFactory()
    assert refusal(account=other, scoped_limit_id=line(account, "day").pk) == {
        "line": ["This limit line does not exist (any more) on this account."]
    }
    assert refusal(
        account=account, scoped_limit_id=line(account, "day").pk, metric="audio_analyzed_seconds"
    ) == {"metric": ["The line is of another metric."]}
    assert refusal(account=account, scoped_limit_id="1") == {
        "line": ["This limit line does not exist (any more) on this account."]
    }


def test_removing_a_line_removes_its_extensions_and_leaves_the_monthly_line_s(
    extended, manager_client
):
    # when: the limits document without its scoped limits
    with time_machine.travel(NOW, tick=False):
        response = manager_client.patch(
            f"/api/v1/accounts/{extended.pk}/limits/", {"scoped_limits": []}, format="json"
        )
    # then
    assert response.status_code == 200
    assert list(Extension.objects.values_list("scoped_limit", "amount")) == [(None, 500)]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (
            {"scoped_limits-0-DELETE": "on"},
            "This limit line does not exist (any more) on this account.",
        ),
        (
            {"scoped_limits-0-blocked": ""},
            "This line has no blocked threshold: an extension raises the blocked threshold, "
            "so set one first.",
        ),
        (
            {"limit_text_tokens_blocked": "", "limit_text_tokens_warning": ""},
            "This line has no blocked threshold: an extension raises the blocked threshold, "
            "so set one first.",
        ),
    ],
)
def test_a_page_that_removes_a_line_or_its_blocked_threshold_cannot_extend_it(
    account, admin_client, change, error
):
    # given: the page changes the line it extends (the daily line, or the monthly one)
    words = MONTH if "limit_text_tokens_blocked" in change else DAY
    with time_machine.travel(NOW, tick=False):
        page = admin_client.get(change_url(account))
        data = page_data(page)
        assert set(change) - {"scoped_limits-0-DELETE"} <= set(data)
        data.update(change)
        add_extension(data, page, words, 100, "Launch")
        # when
        response = admin_client.post(change_url(account), data)
    # then: refused on the extension's row, nothing saved
    assert response.status_code == 200
    assert extension_errors(response) == [{"line": [error]}]
    assert not Extension.objects.exists()
    assert ScopedLimit.objects.filter(account=account).count() == 4


def test_a_page_shown_before_the_line_s_period_moved_on_cannot_extend_the_next_one(
    account, admin_client
):
    # given: the page shown in the last second of the 15:00 hour in Paris
    with time_machine.travel(datetime(2026, 12, 2, 14, 59, 59, tzinfo=UTC), tick=False):
        page = admin_client.get(change_url(account))
    data = page_data(page)
    add_extension(data, page, HOUR, 29500, "Lift the hour")
    # when: posted in the next hour
    with time_machine.travel(datetime(2026, 12, 2, 15, 0, tzinfo=UTC), tick=False):
        response = admin_client.post(change_url(account), data)
    # then
    assert response.status_code == 200
    assert extension_errors(response) == [{"__all__": NOT_CURRENT["period"]}]
    assert not Extension.objects.exists()


def test_a_line_choice_that_was_never_offered_is_refused(account, admin_client):
    # given
    with time_machine.travel(NOW, tick=False):
        page = admin_client.get(change_url(account))
        data = page_data(page)
        add_extension(data, page, HOUR, 1, "Tampered")
        index = int(data["extensions-TOTAL_FORMS"]) - 1
        value = data[f"extensions-{index}-line"]
        for tampered in (value.partition("@")[0] + "@soon", "line:999@" + value.partition("@")[2]):
            data[f"extensions-{index}-line"] = tampered
            # when
            response = admin_client.post(change_url(account), data)
            # then
            assert response.status_code == 200
            assert extension_errors(response) == [
                {
                    "line": [
                        f"Select a valid choice. {tampered} is not one of the available choices."
                    ]
                }
            ]
    assert not Extension.objects.exists()
