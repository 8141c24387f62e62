"""The usage chart of each limit line on the account page (inline SVG, no script).

Limits and usage go through the API as clients send them; the page is read as the admin
serves it, at an instant fixed in each test (Paris local time), and each chart's SVG is
asserted: its points, its threshold lines and its labels, in English and in French.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest
import time_machine
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

from backoffice.charts import PLOT_BOTTOM, PLOT_LEFT, PLOT_RIGHT, PLOT_TOP
from backoffice.services import extensions_grant
from tests.factories import AccountFactory
from usage.selectors import account_lines_steps

pytestmark = pytest.mark.django_db

SVG = "{http://www.w3.org/2000/svg}"
# Wednesday 2 December 2026, 15:30 in Paris (UTC+01:00).
NOW = datetime(2026, 12, 2, 14, 30, tzinfo=UTC)

SCOPED = [
    {"metric": "text_tokens", "period": "day", "window_days": None,
     "labels": {"model": "large"}, "warning": 40000, "blocked": 50000},
    {"metric": "text_tokens", "period": "rolling", "window_days": 7,
     "labels": {}, "warning": None, "blocked": 100000},
    {"metric": "text_tokens", "period": "hour", "window_days": None,
     "labels": {"vendor": "acme"}, "warning": None, "blocked": 1000},
]  # fmt: skip

# (event id, metric, quantity, labels, occurred_at in UTC)
EVENTS = [
    ("today-large", "text_tokens", 12000, {"model": "large"}, "2026-12-02T09:00:00Z"),
    ("this-hour", "text_tokens", 30000, {"model": "large", "vendor": "acme"}, "2026-12-02T14:10:00Z"),
    ("last-hour", "text_tokens", 100, {"vendor": "acme"}, "2026-12-02T13:59:59Z"),
    ("in-window", "text_tokens", 5000, {"model": "small"}, "2026-11-27T10:00:00Z"),
    ("before-window", "text_tokens", 7000, {}, "2026-11-25T22:59:59Z"),
]  # fmt: skip


def limits_put(manager_client, account, limits, scoped) -> None:
    response = manager_client.put(
        f"/api/v1/accounts/{account.pk}/limits/",
        {
            "limits": limits,
            "recipients": {"warning": [{"email": "pm@example.com", "language": "en"}]},
            "scoped_limits": scoped,
        },
        format="json",
    )
    assert response.status_code == 200, response.json()


def events_post(service_client, account, events) -> None:
    batch = [
        {
            "event_id": event_id,
            "account": str(account.pk),
            "metric": metric,
            "quantity": quantity,
            "labels": labels,
            "occurred_at": occurred_at,
        }
        for event_id, metric, quantity, labels, occurred_at in events
    ]
    for start in range(0, len(batch), 1000):
        response = service_client.post(
            "/api/v1/usage/events/", {"events": batch[start : start + 1000]}, format="json"
        )
        assert response.status_code == 201, response.json()


@pytest.fixture
def account(manager_client, service_client):
    account = AccountFactory(timezone="Europe/Paris")
    with time_machine.travel(NOW, tick=False):
        limits_put(
            manager_client,
            account,
            {"text_tokens": {"warning": 800000, "blocked": 1000000}},
            SCOPED,
        )
        events_post(service_client, account, EVENTS)
    return account


def charts_of(user, account, language="en") -> dict[str, str]:
    """Each chart of the account page (its ``<figure>``), by the line it names, as ``user``
    sees it now (logged in now, so that the session holds at the instant travelled to)."""
    client = Client()
    client.force_login(user)
    response = client.get(
        f"/admin/accounts/account/{account.pk}/change/", HTTP_ACCEPT_LANGUAGE=language
    )
    assert response.status_code == 200
    html = response.content.decode()
    figures = re.findall(r'<figure class="usage-chart".*?</figure>', html, re.S)
    return {
        re.search(r'<strong class="usage-chart-line">(.*?)</strong>', figure)[1]: figure
        for figure in figures
    }


def svg_of(figure: str) -> ET.Element:
    return ET.fromstring(re.search(r"<svg.*?</svg>", figure, re.S)[0])


def texts(svg: ET.Element, css_class: str) -> list[str]:
    return [node.text for node in svg.iter(f"{SVG}text") if css_class in node.get("class")]


def thresholds(svg: ET.Element) -> list[tuple[str, str, str]]:
    """``(class, y1, y2)`` of each threshold line, drawn across the whole plot."""
    found = []
    for node in svg.iter(f"{SVG}line"):
        if "usage-chart-threshold" in node.get("class"):
            assert (node.get("x1"), node.get("x2")) == (f"{PLOT_LEFT}", f"{PLOT_RIGHT}")
            found.append((node.get("class").split()[1], node.get("y1"), node.get("y2")))
    return found


def points(svg: ET.Element) -> list[tuple[float, float]]:
    line = svg.find(f"{SVG}polyline")
    return [tuple(map(float, pair.split(","))) for pair in line.get("points").split()]


def expected_points(steps: int, used: list[int], top: int) -> list[tuple[float, float]]:
    """The start of the window at zero, then the cumulative usage at the end of each step."""
    width, height = PLOT_RIGHT - PLOT_LEFT, PLOT_BOTTOM - PLOT_TOP
    return [(float(PLOT_LEFT), float(PLOT_BOTTOM))] + [
        (
            round(PLOT_LEFT + width * (index + 1) / steps, 1),
            round(PLOT_BOTTOM - height * value / top, 1),
        )
        for index, value in enumerate(used)
    ]


def test_a_daily_line_is_drawn_hour_by_hour_against_its_thresholds(account, admin_user):
    # when
    with time_machine.travel(NOW, tick=False):
        charts = charts_of(admin_user, account)
    # then: 24 hours of 2 December, the 12,000 tokens of 10:00 then the 30,000 of 15:00
    figure = charts["Text tokens, Day (Model: large)"]
    assert "Day from Dec. 2, 2026, midnight to Dec. 3, 2026, midnight (Europe/Paris time)" in figure
    assert (
        "Used: 42,000 tokens. Warning threshold: 40,000 tokens. Blocked threshold: 50,000 tokens."
        in figure
    )
    assert "usage-badge-warning" in figure
    svg = svg_of(figure)
    assert svg.get("role") == "img"
    assert svg.find(f"{SVG}title").text == (
        "Text tokens, Day (Model: large): "
        "Day from Dec. 2, 2026, midnight to Dec. 3, 2026, midnight (Europe/Paris time)"
    )
    assert svg.find(f"{SVG}desc").text.startswith(
        "Usage accumulated hour by hour, in tokens, Day from Dec. 2, 2026, midnight"
    )
    used = [0] * 10 + [12000] * 5 + [42000]  # to the end of the 15:00 hour, now
    assert points(svg) == expected_points(24, used, 50000)
    assert thresholds(svg) == [
        ("usage-chart-warning", "52.0", "52.0"),
        ("usage-chart-blocked", "16.0", "16.0"),
    ]
    assert texts(svg, "usage-chart-threshold-label") == ["Warning: 40,000", "Blocked: 50,000"]
    assert texts(svg, "usage-chart-x") == ["00:00", "23:00"]
    assert texts(svg, "usage-chart-y") == ["50,000", "0"]
    assert texts(svg, "usage-chart-unit") == ["tokens"]
    assert len(list(svg.iter(f"{SVG}line"))) == 2 + 23 + 2  # axes, a tick per hour, thresholds
    # and the same figures as text, hour by hour
    rows = re.findall(r"<tr><td>(.*?)</td><td[^>]*>(.*?)</td><td[^>]*>(.*?)</td></tr>", figure)
    assert rows[10] == ("10:00", "12,000", "12,000")
    assert rows[15] == ("15:00", "30,000", "42,000")
    assert len(rows) == 16


def test_the_monthly_and_rolling_lines_are_drawn_day_by_day(account, admin_user):
    # when
    with time_machine.travel(NOW, tick=False):
        charts = charts_of(admin_user, account)
    # then: the month, 31 days, 42,100 tokens on the 2nd
    month = svg_of(charts["Text tokens, Calendar month"])
    assert points(month) == expected_points(31, [0, 42100], 1_000_000)
    assert thresholds(month) == [
        ("usage-chart-warning", "52.0", "52.0"),
        ("usage-chart-blocked", "16.0", "16.0"),
    ]
    assert texts(month, "usage-chart-threshold-label") == ["Warning: 800,000", "Blocked: 1,000,000"]
    assert texts(month, "usage-chart-x") == ["Dec. 1, 2026", "Dec. 31, 2026"]
    # the rolling window, 26 November to 2 December: 5,000 on the 27th, 42,100 today
    rolling = charts["Text tokens, Rolling window of 7 days"]
    assert (
        "Rolling window of 7 days from Nov. 26, 2026, midnight to Dec. 3, 2026, midnight" in rolling
    )
    assert points(svg_of(rolling)) == expected_points(7, [0, *[5000] * 5, 47100], 100_000)
    assert thresholds(svg_of(rolling)) == [("usage-chart-blocked", "16.0", "16.0")]
    # a metric without limits: its usage (none) and no threshold line
    audio = charts["Audio transcribed, Calendar month"]
    assert "Used: 0 seconds. No threshold." in audio
    assert thresholds(svg_of(audio)) == []
    assert texts(svg_of(audio), "usage-chart-y") == ["1", "0"]
    # an hourly line: its current figure, no curve
    hour = charts["Text tokens, Hour (Vendor: acme)"]
    assert "Hour from Dec. 2, 2026, 3 p.m. to Dec. 2, 2026, 4 p.m. (Europe/Paris time)" in hour
    assert "Used: 30,000 tokens. Blocked threshold: 1,000 tokens." in hour
    assert "<svg" not in hour and "usage-badge-blocked" in hour
    assert list(charts) == [
        "Audio transcribed, Calendar month",
        "Audio analyzed, Calendar month",
        "Text tokens, Calendar month",
        "Text tokens, Day (Model: large)",
        "Text tokens, Rolling window of 7 days",
        "Text tokens, Hour (Vendor: acme)",
    ]


def test_the_chart_speaks_french(account, admin_user):
    # when
    with time_machine.travel(NOW, tick=False):
        charts = charts_of(admin_user, account, "fr")
    # then
    figure = charts["Jetons texte, Jour (Modèle : large)"]
    assert "Jour du 2 décembre 2026 00:00 au 3 décembre 2026 00:00 (heure Europe/Paris)" in figure
    assert "Consommé : 42\xa0000 jetons." in figure
    svg = svg_of(figure)
    assert texts(svg, "usage-chart-threshold-label") == [
        "Avertissement : 40\xa0000",
        "Bloqué : 50\xa0000",
    ]
    assert texts(svg, "usage-chart-unit") == ["jetons"]
    assert svg.find(f"{SVG}desc").text.startswith("Consommation cumulée heure par heure, en jetons")


@pytest.mark.parametrize(
    ("now", "hours", "first", "last", "events", "used"),
    [
        # 28 March 2027 in Paris: 23 hours, from 00:00+01:00 to 23:00+02:00
        (
            datetime(2027, 3, 28, 12, 0, tzinfo=UTC),
            23,
            "00:00 (UTC+01:00)",
            "23:00 (UTC+02:00)",
            [("before", "2027-03-27T23:30:00Z", 100), ("after", "2027-03-28T01:30:00Z", 200)],
            [100, 100] + [300] * 12,  # 00:00, 01:00, then 03:00 to 14:00+02:00
        ),
        # 31 October 2027 in Paris: 25 hours, 02:00 twice
        (
            datetime(2027, 10, 31, 12, 0, tzinfo=UTC),
            25,
            "00:00 (UTC+02:00)",
            "23:00 (UTC+01:00)",
            [
                ("first-two", "2027-10-31T00:30:00Z", 100),
                ("second-two", "2027-10-31T01:30:00Z", 200),
            ],
            [0, 0, 100, 300] + [300] * 11,  # ... 02:00+02:00, 02:00+01:00, ... 13:00+01:00
        ),
    ],
)
def test_a_daily_line_on_a_day_of_dst_change(
    manager_client, service_client, admin_user, now, hours, first, last, events, used
):
    # given
    account = AccountFactory(timezone="Europe/Paris")
    with time_machine.travel(now, tick=False):
        limits_put(manager_client, account, {}, [{**SCOPED[0], "labels": {}}])
        events_post(
            service_client,
            account,
            [(event_id, "text_tokens", quantity, {}, at) for event_id, at, quantity in events],
        )
        # when
        charts = charts_of(admin_user, account)
    # then
    svg = svg_of(charts["Text tokens, Day"])
    assert points(svg) == expected_points(hours, used, 50000)
    assert texts(svg, "usage-chart-x") == [first, last]
    rows = re.findall(r"<tr><td>(.*?)</td>", charts["Text tokens, Day"])
    assert len(rows) == len(used)
    if hours == 25:
        assert rows[2:4] == ["02:00 (UTC+02:00)", "02:00 (UTC+01:00)"]
    else:
        assert rows[1:3] == ["01:00 (UTC+01:00)", "03:00 (UTC+02:00)"]


def test_a_month_with_a_dst_change_has_one_step_per_local_day(
    manager_client, service_client, admin_user
):
    # given: 27 and 28 March 2027 in Paris, the second 23 hours long
    account = AccountFactory(timezone="Europe/Paris")
    now = datetime(2027, 3, 29, 10, 0, tzinfo=UTC)
    with time_machine.travel(now, tick=False):
        events_post(
            service_client,
            account,
            [
                ("late-27", "text_tokens", 10, {}, "2027-03-27T22:59:59Z"),
                ("early-28", "text_tokens", 20, {}, "2027-03-27T23:00:00Z"),
                ("late-28", "text_tokens", 40, {}, "2027-03-28T21:59:59Z"),
                ("early-29", "text_tokens", 80, {}, "2027-03-28T22:00:00Z"),
            ],
        )
        charts = charts_of(admin_user, account)
    # then
    svg = svg_of(charts["Text tokens, Calendar month"])
    assert points(svg) == expected_points(31, [0] * 26 + [10, 70, 150], 200)
    assert texts(svg, "usage-chart-y") == ["200", "0"]


def steps_queries(account) -> int:
    with CaptureQueriesContext(connection) as queries:
        account_lines_steps(account=account)
    return len(queries)


def test_the_chart_costs_the_same_queries_whatever_the_days_and_the_events(
    manager_client, service_client
):
    # given: two accounts with the same lines, one with a few events, one with many over
    # every day of a 30-day rolling window and every hour of today
    now = datetime(2027, 1, 31, 22, 0, tzinfo=UTC)
    few, many = AccountFactory(timezone="Europe/Paris"), AccountFactory(timezone="Europe/Paris")
    scoped = [*SCOPED, {**SCOPED[1], "window_days": 30}]
    with time_machine.travel(now, tick=False):
        for account in (few, many):
            limits_put(
                manager_client, account, {"text_tokens": {"warning": 10, "blocked": 20}}, scoped
            )
        events_post(service_client, few, [("one", "text_tokens", 1, {}, "2027-01-31T10:00:00Z")])
        events_post(
            service_client,
            many,
            [
                (
                    f"e-{day}-{hour}",
                    "text_tokens",
                    1,
                    {"model": "large"},
                    f"2027-01-{day:02d}T{hour:02d}:00:00Z",
                )
                for day in range(2, 32)
                for hour in range(0, 22, 2)
            ],
        )
        # when
        counts = steps_queries(few), steps_queries(many)
        lines = account_lines_steps(account=many)
    # then: the lines, the day counters, the hour counters
    assert counts == (4, 4)
    assert [line.used[-1] for line in lines if line.used] == [
        0,
        0,
        330_000,
        11_000,
        77_000,
        330_000,
    ]


def test_an_extension_raises_the_blocked_line_of_the_monthly_chart(account, admin_user):
    # given: 200,000 more tokens granted for December
    with time_machine.travel(NOW, tick=False):
        extensions_grant(
            account=account,
            rows=[{"metric": "text_tokens", "amount": 200000, "reason": "launch"}],
            actor=admin_user,
        )
        # when
        charts = charts_of(admin_user, account)
    # then: the blocked line at 1,200,000 on a scale of 2,000,000, the warning one unmoved
    figure = charts["Text tokens, Calendar month"]
    assert (
        "Used: 42,100 tokens. Warning threshold: 800,000 tokens. "
        "Blocked threshold: 1,200,000 tokens (1,000,000 + extensions 200,000)."
    ) in figure
    svg = svg_of(figure)
    assert thresholds(svg) == [
        ("usage-chart-warning", "124.0", "124.0"),
        ("usage-chart-blocked", "88.0", "88.0"),
    ]
    assert texts(svg, "usage-chart-threshold-label") == ["Warning: 800,000", "Blocked: 1,200,000"]
    assert texts(svg, "usage-chart-y") == ["2,000,000", "0"]
