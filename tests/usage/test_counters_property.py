"""For any sequence of batches, duplicates and retries, counters equal the distinct events
and ``rebuild_usage --check`` finds no drift."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from io import StringIO

from django.core.management import call_command
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.django import TestCase

from accounts.metrics import METRICS
from backoffice.services import usage_events_record
from tests.factories import AccountFactory
from usage.models import UsageCounter

NOW = datetime.fromisoformat("2026-11-23T10:00:00+00:00")

events = st.tuples(
    st.integers(min_value=0, max_value=25),  # event id: small, so copies are frequent
    st.sampled_from(list(METRICS)),
    st.integers(min_value=1, max_value=5_000_000),  # thousandths
    st.integers(min_value=0, max_value=24 * 80),  # hours before NOW: this and past periods
    st.dictionaries(st.sampled_from(["model", "vendor"]), st.sampled_from(["a", "b"])),
)


def quantity(metric: str, milli: int) -> Decimal | int:
    if METRICS[metric].decimal_places == 0:
        return milli  # tokens: read as a whole number of tokens
    return Decimal(milli).scaleb(-3)


class CountersProperty(TestCase):
    @settings(max_examples=40, deadline=None)
    @given(batches=st.lists(st.lists(events, min_size=1, max_size=15), min_size=1, max_size=6))
    def test_counters_equal_the_sum_of_distinct_events(self, batches):
        account = AccountFactory(timezone="Europe/Paris")
        first: dict[str, tuple[str, int]] = {}
        for batch in batches:
            payload = {
                "events": [
                    {
                        "event_id": f"e{number}",
                        "account": str(account.pk),
                        "metric": metric,
                        "quantity": quantity(metric, milli),
                        "occurred_at": (NOW - timedelta(hours=hours)).isoformat(),
                        "labels": labels,
                    }
                    for number, metric, milli, hours, labels in batch
                ]
            }
            usage_events_record(payload=payload, now=NOW)
            usage_events_record(payload=payload, now=NOW)  # a client retry
            for number, metric, milli, _hours, _labels in batch:
                scaled = milli if METRICS[metric].decimal_places else milli * 1000
                first.setdefault(f"e{number}", (metric, scaled))

        expected: dict[str, int] = defaultdict(int)
        for metric, scaled in first.values():
            expected[metric] += scaled
        counted: dict[str, int] = defaultdict(int)
        for metric, milli in UsageCounter.objects.filter(account=account, labels="").values_list(
            "metric", "quantity_milli"
        ):
            counted[metric] += milli
        assert dict(counted) == dict(expected)
        out = StringIO()
        call_command("rebuild_usage", "--check", "--account", str(account.pk), stdout=out)
        assert "drifted: 0." in out.getvalue()
