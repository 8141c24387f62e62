"""Counter rows are written in the order of their keys, whatever order they were added in:
concurrent writers then lock the rows they share in the same order and never deadlock."""

from __future__ import annotations

import json
import random
import uuid
from datetime import UTC, date, datetime, timedelta

import pytest
from django.db import connection

from tests.factories import AccountFactory
from usage.services import CounterDeltas, counters_add

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 12, 6, 23, 30, tzinfo=UTC)


def test_counter_rows_are_written_in_the_order_of_their_keys():
    # given: label sets, days and hours of several accounts, added in a shuffled order
    accounts = [AccountFactory(timezone="UTC").pk for _ in range(4)]
    added = [
        (account, metric, labels, NOW - timedelta(hours=hours))
        for account in accounts
        for metric in ("text_tokens", "audio_analyzed_seconds")
        for labels in ("", "vendor=acme", "technology=llm;vendor=acme")
        for hours in (0, 1, 25, 49)
    ]
    random.Random(3).shuffle(added)
    deltas = CounterDeltas()
    for account, metric, labels, hour in added:
        day = hour.date()
        key = (account, metric, labels)
        deltas.days[(*key, day)] += 1000
        deltas.hours[(*key, hour, day)] += 1000
    written: list[list[list[object]]] = []

    def capture(execute, sql, params, many, context):
        written.extend(json.loads(p) for p in params if isinstance(p, str) and p[:1] == "[")
        return execute(sql, params, many, context)

    # when
    with connection.execute_wrapper(capture):
        counters_add(deltas, NOW)

    # then: each table's rows (hours, then days on PostgreSQL) come sorted by their keys
    def key(row: list[object]) -> tuple[object, ...]:
        moment = datetime.fromisoformat(str(row[3]))
        moment = moment.date() if len(str(row[3])) == 10 else moment.replace(tzinfo=UTC)
        return (uuid.UUID(str(row[0])), row[1], row[2], moment)

    assert sorted(len(rows) for rows in written) == [72, 96]
    for rows in written:
        keys = [key(row) for row in rows]
        assert keys == sorted(keys)
    assert {type(k[3]) for rows in written for k in map(key, rows)} == {date, datetime}
