"""The ops commands of usage: report, rebuild of counters, purge of old events (SPEC section 8)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest
from django.core.management import call_command, load_command_class
from django.core.management.base import CommandError
from django.utils import timezone

from tests.factories import AccountFactory, LimitFactory
from tests.usage.factories import counter_corrupt, counters_of, event_record
from usage import selectors
from usage.models import CounterRepair, EventPurge, Extension, UsageCounter, UsageEvent
from usage.selectors import REPORT_COLUMNS, current_period, usage_report_rows

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def acme():
    """An account past its warning threshold on tokens, with an extension, and some audio."""
    account = AccountFactory(name="Acme", external_id="crm-acme", timezone="Europe/Paris")
    LimitFactory(account=account, metric="text_tokens", warning=800, blocked=1000)
    Extension.objects.create(
        account=account,
        metric="text_tokens",
        period=current_period(account).first_day,
        amount=200,
        reason="Launch week",
    )
    now = timezone.now()
    event_record(account, now, 900)
    event_record(account, now, "12.5", metric="audio_transcribed_seconds")
    return account


@pytest.fixture
def beta():
    """An account without limits or usage."""
    return AccountFactory(name="Beta", external_id="crm-beta", timezone="UTC")


# --- usage_report ------------------------------------------------------------------------


def test_the_report_is_a_table_of_every_metric_of_every_active_account(acme, beta):
    # given
    AccountFactory(name="Closed", is_active=False)
    period, later = current_period(acme).code, current_period(beta).code

    # when
    out, _err = run("usage_report")

    # then
    lines = [line.split() for line in out.splitlines()]
    assert lines == [
        [
            "external_id",
            "period",
            "line",
            "metric",
            "used",
            "warning",
            "blocked",
            "extension",
            "remaining",
            "status",
        ],
        [
            "crm-acme",
            period,
            "month",
            "audio_transcribed_seconds",
            "12.5",
            "-",
            "-",
            "0",
            "-",
            "ok",
        ],
        ["crm-acme", period, "month", "audio_analyzed_seconds", "0", "-", "-", "0", "-", "ok"],
        ["crm-acme", period, "month", "text_tokens", "900", "800", "1000", "200", "300", "warning"],
        ["crm-beta", later, "month", "audio_transcribed_seconds", "0", "-", "-", "0", "-", "ok"],
        ["crm-beta", later, "month", "audio_analyzed_seconds", "0", "-", "-", "0", "-", "ok"],
        ["crm-beta", later, "month", "text_tokens", "0", "-", "-", "0", "-", "ok"],
    ]


def test_the_report_as_csv_has_a_header_and_one_row_per_account_and_metric(acme, beta):
    # when
    out, _err = run("usage_report", "--format", "csv")

    # then
    reader = csv.DictReader(io.StringIO(out))
    assert reader.fieldnames == list(REPORT_COLUMNS)
    rows = list(reader)
    assert [(row["external_id"], row["metric"]) for row in rows] == [
        ("crm-acme", "audio_transcribed_seconds"),
        ("crm-acme", "audio_analyzed_seconds"),
        ("crm-acme", "text_tokens"),
        ("crm-beta", "audio_transcribed_seconds"),
        ("crm-beta", "audio_analyzed_seconds"),
        ("crm-beta", "text_tokens"),
    ]
    assert rows[2] == {
        "account": str(acme.pk),
        "external_id": "crm-acme",
        "name": "Acme",
        "period": current_period(acme).code,
        "period_kind": "month",
        "window_days": "",
        "labels": "",
        "metric": "text_tokens",
        "unit": "tokens",
        "used": "900",
        "warning": "800",
        "blocked": "1000",
        "extension": "200",
        "remaining": "300",
        "status": "warning",
    }
    assert (rows[0]["used"], rows[0]["warning"], rows[0]["remaining"]) == ("12.5", "", "")


def test_the_report_as_json_of_one_account_named_by_external_id(acme, beta):
    # when
    out, _err = run("usage_report", "crm-acme", "--format", "json")

    # then
    data = json.loads(out)
    assert [row["metric"] for row in data] == [
        "audio_transcribed_seconds",
        "audio_analyzed_seconds",
        "text_tokens",
    ]
    assert data[0] == {
        "account": str(acme.pk),
        "external_id": "crm-acme",
        "name": "Acme",
        "period": current_period(acme).code,
        "period_kind": "month",
        "window_days": None,
        "labels": "",
        "metric": "audio_transcribed_seconds",
        "unit": "seconds",
        "used": 12.5,
        "warning": None,
        "blocked": None,
        "extension": 0,
        "remaining": None,
        "status": "ok",
    }
    assert (data[2]["used"], data[2]["remaining"], data[2]["status"]) == (900, 300, "warning")


def test_the_report_of_a_past_period_by_account_id(acme):
    # given
    event_record(acme, "2026-03-31T23:30:00+02:00", 1200)  # still March in Paris
    event_record(acme, "2026-03-31T22:30:00+00:00", 5)  # April in Paris

    # when
    out, _err = run("usage_report", str(acme.pk), "--period", "2026-03", "--format", "json")

    # then
    tokens = json.loads(out)[2]
    assert tokens["period"] == "2026-03"
    assert (tokens["used"], tokens["extension"], tokens["remaining"], tokens["status"]) == (
        1200,
        0,
        0,
        "blocked",
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nobody"], "Unknown account “nobody” (give its id or external id)."),
        (
            ["--period", "2026-13"],
            "Invalid period “2026-13”: expected a month from 2000-01 to 9999-11, as YYYY-MM.",
        ),
        (
            ["--period", "March"],
            "Invalid period “March”: expected a month from 2000-01 to 9999-11, as YYYY-MM.",
        ),
        (["--format", "xml"], "Error: argument --format: invalid choice: 'xml'"),
    ],
)
def test_the_report_refuses_bad_input_in_one_line(acme, args, message):
    # when
    with pytest.raises(CommandError) as refused:
        run("usage_report", *args)

    # then
    assert str(refused.value).startswith(message)
    assert "\n" not in str(refused.value)


def test_the_report_costs_the_same_queries_for_one_account_or_many(acme, django_assert_num_queries):
    # given
    for account in AccountFactory.create_batch(5):
        LimitFactory(account=account)
        event_record(account, timezone.now(), 3)

    # when / then: accounts, then usage (counters, extensions and limits in one query),
    # then which of them have scoped limits (none here)
    with django_assert_num_queries(3):
        rows = usage_report_rows(account=None, period_code=None)
    assert len(rows) == 6 * 3
    with django_assert_num_queries(1):
        usage_report_rows(account=acme, period_code="2026-03")


def test_the_report_reads_many_accounts_chunk_by_chunk(monkeypatch, django_assert_num_queries):
    # given
    monkeypatch.setattr(selectors, "REPORT_CHUNK", 2)
    accounts = AccountFactory.create_batch(5)
    event_record(accounts[4], "2026-03-10T10:00:00+01:00", 7)

    # when / then: accounts, then one usage query per chunk of 2
    with django_assert_num_queries(1 + 3):
        rows = usage_report_rows(account=None, period_code="2026-03")
    assert len(rows) == 5 * 3
    assert {(row.account.pk, row.usage.metric): row.usage.used_milli for row in rows}[
        (accounts[4].pk, "text_tokens")
    ] == 7_000


# --- rebuild_usage -----------------------------------------------------------------------


@pytest.fixture
def drifted(beta):
    """``beta`` with one good counter and one counter off by a lot."""
    event_record(beta, "2026-03-10T10:00:00+00:00", 100)
    event_record(beta, "2026-03-11T10:00:00+00:00", 7)
    counter_corrupt(beta, date(2026, 3, 10), 5)
    return beta


def test_rebuild_check_lists_the_drift_and_exits_1_without_changing_anything(drifted):
    # when
    out, err = io.StringIO(), io.StringIO()
    with pytest.raises(CommandError) as failed:
        call_command("rebuild_usage", "--check", stdout=out, stderr=err)

    # then
    assert failed.value.returncode == 1
    assert str(failed.value) == (
        "1 counters drifted; run rebuild_usage without --check to repair them."
    )
    assert out.getvalue().splitlines() == [
        "crm-beta text_tokens 2026-03-10: counter 0.005, events 100",
        "Counters checked: 4, drifted: 1.",
    ]
    assert err.getvalue() == "Accounts: 1 of 1; counters checked: 4, drifted: 1.\n"
    assert counters_of(drifted)[date(2026, 3, 10)] == 5
    assert not CounterRepair.objects.exists()


def test_rebuild_check_exits_0_when_every_counter_is_right(beta):
    # given
    event_record(beta, "2026-03-10T10:00:00+00:00", 100)

    # when
    out, _err = run("rebuild_usage", "--check")

    # then
    assert out.splitlines() == ["Counters checked: 2, drifted: 0."]


def test_rebuild_repairs_the_drifted_counters_and_records_each_repair(drifted):
    # when
    out, _err = run("rebuild_usage")

    # then
    assert out.splitlines() == [
        "crm-beta text_tokens 2026-03-10: counter 0.005, events 100",
        "Counters checked: 4, drifted: 1, repaired: 1.",
    ]
    assert counters_of(drifted) == {date(2026, 3, 10): 100_000, date(2026, 3, 11): 7_000}
    repair = CounterRepair.objects.get()
    assert (repair.day, repair.found_milli, repair.expected_milli, repair.repaired_by) == (
        date(2026, 3, 10),
        5,
        100_000,
        "rebuild_usage command",
    )
    assert run("rebuild_usage", "--check")[0].splitlines() == ["Counters checked: 4, drifted: 0."]


def test_rebuild_of_one_account_and_one_period_leaves_the_rest_alone(drifted):
    # given
    other = AccountFactory(external_id="crm-other")
    event_record(other, "2026-03-10T10:00:00+01:00", 1)
    counter_corrupt(other, date(2026, 3, 10), 0)
    event_record(drifted, "2026-04-02T10:00:00+00:00", 1)
    counter_corrupt(drifted, date(2026, 4, 2), 0)

    # when
    out, _err = run("rebuild_usage", "--account", "crm-beta", "--period", "2026-03")

    # then
    assert out.splitlines()[-1] == "Counters checked: 4, drifted: 1, repaired: 1."
    assert counters_of(drifted)[date(2026, 4, 2)] == 0
    assert counters_of(other) == {date(2026, 3, 10): 0}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--account", "nobody"], "Unknown account “nobody” (give its id or external id)."),
        (
            ["--period", "2026-3"],
            "Invalid period “2026-3”: expected a month from 2000-01 to 9999-11, as YYYY-MM.",
        ),
    ],
)
def test_rebuild_refuses_bad_input_in_one_line(args, message):
    with pytest.raises(CommandError) as refused:
        run("rebuild_usage", *args)
    assert (str(refused.value), refused.value.returncode) == (message, 1)


# --- purge_usage_events ------------------------------------------------------------------


@pytest.fixture
def old_and_recent(beta):
    """``beta`` with one event in January 2025, one in March 2025 and one today."""
    event_record(beta, "2025-01-15T10:00:00+00:00", 1, event_id="january")
    event_record(beta, "2025-03-15T10:00:00+00:00", 2, event_id="march")
    event_record(beta, timezone.now(), 4, event_id="today")
    return beta


def test_purge_refuses_a_day_in_the_current_period(old_and_recent):
    # given
    tomorrow = (timezone.now() + timedelta(days=1)).date()

    # when
    with pytest.raises(CommandError) as refused:
        run("purge_usage_events", "--before", tomorrow.isoformat())

    # then
    assert str(refused.value).startswith(f"Refused: {tomorrow.isoformat()} is in a current period.")
    assert UsageEvent.objects.count() == 3
    assert not EventPurge.objects.exists()


def test_purge_dry_run_counts_the_events_and_deletes_nothing(old_and_recent):
    # when
    out, _err = run("purge_usage_events", "--before", "2025-02-01", "--dry-run")

    # then
    assert out == "Events that would be deleted (days before 2025-02-01): 1.\n"
    assert UsageEvent.objects.count() == 3
    assert not EventPurge.objects.exists()


def test_purge_deletes_old_events_keeps_counters_and_a_later_check_finds_no_drift(old_and_recent):
    # given
    counters = counters_of(old_and_recent)

    # when
    out, _err = run("purge_usage_events", "--before", "2025-02-01")

    # then
    assert out == "Events deleted (days before 2025-02-01): 1. Counters kept.\n"
    assert sorted(UsageEvent.objects.values_list("event_id", flat=True)) == ["march", "today"]
    assert counters_of(old_and_recent) == counters
    assert UsageCounter.objects.filter(day=date(2025, 1, 15)).get().quantity_milli == 1_000
    assert run("rebuild_usage", "--check")[0].splitlines() == ["Counters checked: 4, drifted: 0."]


@pytest.mark.parametrize("value", ["2025-02-30", "20250201", "yesterday", "2025-2-1"])
def test_purge_refuses_a_malformed_date_in_one_line(value):
    with pytest.raises(CommandError) as refused:
        run("purge_usage_events", "--before", value)
    assert str(refused.value) == f"Invalid date “{value}”: expected YYYY-MM-DD."


def test_purge_requires_a_date():
    with pytest.raises(CommandError, match="the following arguments are required: --before"):
        run("purge_usage_events")


def test_a_refusal_on_the_command_line_is_one_line_and_exits_non_zero():
    # when
    done = subprocess.run(
        [sys.executable, "manage.py", "purge_usage_events", "--before", "soon"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        timeout=60,
    )

    # then
    assert done.returncode == 1
    assert done.stderr == "CommandError: Invalid date “soon”: expected YYYY-MM-DD.\n"
    assert done.stdout == ""


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("usage_report", "Print the usage of every metric of every active account"),
        ("rebuild_usage", "With --check nothing is changed"),
        ("purge_usage_events", "keeping the daily counters"),
    ],
)
def test_each_command_says_what_it_does_in_its_help(name, says):
    # when
    text = load_command_class("usage", name).create_parser("manage.py", name).format_help()

    # then
    assert says in " ".join(text.split())
