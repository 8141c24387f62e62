"""The bench's own logic: what it counts as exact, how it reads its options, how it writes
docs/performance.md. The bench itself never runs in the suite (no timed assertion here)."""

from __future__ import annotations

import os
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.insert(0, str(BENCH))  # the scripts import their neighbours by name, as when run

import ingest  # noqa: E402
import performance  # noqa: E402
import plans  # noqa: E402
import sweep  # noqa: E402
from results import Figure, results_read, results_write  # noqa: E402


def race(statuses: list[int], used: int = 5_500_000, reserved: int = 4_000_000):
    return ingest.RaceOutcome(
        statuses=statuses,
        used_milli=used,
        reserved_milli=reserved,
        blocked_milli=10_000_000,
        fits=4,
    )


def test_a_race_is_exact_when_those_that_fit_and_only_they_got_201():
    assert race([201] * 4 + [409] * 16).exact
    assert race([409] * 10 + [201] * 4 + [409] * 6).granted == 4


@pytest.mark.parametrize(
    "statuses, reserved",
    [
        ([201] * 5 + [409] * 15, 4_000_000),  # one too many granted
        ([201] * 3 + [409] * 17, 3_000_000),  # one that fitted refused
        ([201] * 4 + [409] * 15 + [500], 4_000_000),  # an error is not a refusal
        ([201] * 4 + [409] * 16, 4_500_001),  # the cap passed, whatever the answers said
    ],
)
def test_a_race_is_not_exact_otherwise(statuses, reserved):
    assert not race(statuses, reserved=reserved).exact


def test_the_race_leaves_room_for_a_few_of_the_racers():
    assert 0 < ingest.RACE_FITS < ingest.RACERS
    assert ingest.RACE_USED + ingest.RACE_FITS * ingest.RACE_QUANTITY <= ingest.RACE_BLOCKED
    assert ingest.RACE_USED + (ingest.RACE_FITS + 1) * ingest.RACE_QUANTITY > ingest.RACE_BLOCKED


@pytest.mark.parametrize(
    "text, arguments",
    [
        ("sync:2", ["--workers", "2", "--worker-class", "sync"]),
        ("sync:4", ["--workers", "4", "--worker-class", "sync"]),
        ("gthread:2x4", ["--workers", "2", "--worker-class", "gthread", "--threads", "4"]),
        ("gthread:3", ["--workers", "3", "--worker-class", "gthread", "--threads", "4"]),
    ],
)
def test_a_server_is_read_from_its_short_form(text, arguments):
    server = ingest.Server.parse(text)
    assert server.arguments() == arguments
    assert ingest.Server.parse(str(server)) == server


@pytest.mark.parametrize("text", ["sync", "eventlet:2", "sync:2x4", "sync:0", "gthread:2x0", "x"])
def test_a_server_form_that_means_nothing_is_refused(text):
    with pytest.raises(ValueError, match=repr(text)):
        ingest.Server.parse(text)


def test_the_crossing_latency_runs_from_the_request_to_the_hand_over():
    start = datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    posted = {"a": start, "b": start + 1, "c": start + 2}
    sent = {
        "a": datetime(2027, 1, 1, tzinfo=UTC) + timedelta(milliseconds=250),
        "b": datetime(2027, 1, 1, tzinfo=UTC) + timedelta(seconds=1, milliseconds=100),
    }  # "c" never sent: left out, and counted as missing by the caller
    assert ingest.crossing_latencies(posted, sent) == pytest.approx([100, 250])


def test_the_sweeps_labelled_counters_are_those_its_scoped_lines_read():
    assert sweep.scoped_counter_keys(0) == []
    assert sweep.scoped_counter_keys(10) == [
        ("audio_analyzed_seconds", "vendor=nova"),
        ("audio_transcribed_seconds", "technology=asr"),
        ("text_tokens", "operation=chat;technology=llm"),
        ("text_tokens", "technology=llm"),
        ("text_tokens", "vendor=acme"),
    ]
    # far below the scoped thresholds on any day: the lines cross nothing, the monthly
    # ones do
    assert all(
        sweep.scoped_usage_milli(i, m, day) * 366 < sweep.SCOPED_HIGH // 2 * 1000
        for i in range(100)
        for m in sweep.THRESHOLDS
        for day in (date(2027, 2, 1), date(2027, 2, 28), date(2028, 2, 29), date(2027, 12, 31))
    )


@pytest.mark.parametrize(
    ("accounts", "expected"),
    [
        # warnings (i % 100 < 10), blocked (i % 100 < 2), forecasts (2 <= i % 100 < 10)
        (1, 1 + 1 + 0),
        (5, 5 + 2 + 3),
        (50, 10 + 2 + 8),
        (100, 10 + 2 + 8),
        (250, 30 + 6 + 24),
    ],
)
def test_the_sweep_expects_the_notifications_of_the_accounts_it_stores(accounts, expected):
    # mid-month in the bench's four zones: every account in between gets its forecast
    assert sweep.notifications_expected(accounts, datetime(2027, 1, 15, 12, tzinfo=UTC)) == (
        expected
    )


def test_the_sweep_expects_no_forecast_in_the_first_tenth_of_the_month():
    # 2 January at noon UTC: less than a tenth of January has passed in every zone
    assert sweep.notifications_expected(50, datetime(2027, 1, 2, 12, tzinfo=UTC)) == 12


DOC = """# Performance

Hand-written introduction.

{block}

## Counters and batch ingestion

Another section, by hand.
"""


def results_file(tmp_path: Path, figures: list[Figure]) -> Path:
    path = tmp_path / "ingest.json"
    results_write(
        path,
        script="ingest.py --quick",
        figures=figures,
        facts={"busy_at_start": "3%", "python_speed": "16.0", "load_average_at_end": "0.5"},
        tables={"c": [["path", "req/s"], ["plain floor", "1,900"]]},
    )
    return path


def test_the_doc_gets_the_generated_block_and_keeps_the_rest(tmp_path):
    figures = [
        Figure("c. single-event POST", "300 req/s"),
        Figure("   share of its floor's req/s", "0.62", ">= 0.60", True),
        Figure("f. request to e-mail handed over, p50", "120 ms", "< 500 ms", False),
    ]
    document = results_read(results_file(tmp_path, figures))
    old = f"{performance.BEGIN}\n\nold figures\n\n{performance.END}"
    text = performance.doc_replace(DOC.format(block=old), performance.block([document]))

    assert "old figures" not in text
    assert text.startswith("# Performance\n\nHand-written introduction.\n\n")
    assert text.endswith("\n\n## Counters and batch ingestion\n\nAnother section, by hand.\n")
    assert text.count(performance.BEGIN) == 1 and text.count(performance.END) == 1
    assert "| c. single-event POST: share of its floor's req/s | 0.62 | >= 0.60 | PASS |" in text
    assert "| f. request to e-mail handed over, p50 | 120 ms | < 500 ms | FAIL |" in text
    assert "1 targets met, 1 missed." in text
    assert "| plain floor | 1,900 |" in text

    again = performance.doc_replace(text, performance.block([document]))
    assert again == text  # replaced in place, not added a second time


def test_a_doc_without_the_markers_gets_the_block_at_its_end(tmp_path):
    document = results_read(results_file(tmp_path, [Figure("x", "1")]))
    text = performance.doc_replace("# Performance\n\nBy hand.\n", performance.block([document]))
    assert text.startswith("# Performance\n\nBy hand.\n\n" + performance.BEGIN)
    assert text.endswith(performance.END + "\n")


def test_a_pipe_in_a_figure_does_not_break_the_table():
    assert performance.markdown_table([["a", "b"], ["x | y", "1"]])[-1] == "| x \\| y | 1 |"


PLAN = """Nested Loop  (cost=0.57..16.62 rows=1 width=8) (actual time=0.02..0.03 rows=1 loops=1)
  ->  Index Scan using accounts_account_pkey on accounts_account a  (actual rows=1 loops=1)
  ->  Seq Scan on usage_usageevent e  (actual rows=0 loops=1)
  ->  Index Only Scan using usage_counter_key_once on usage_usagecounterkey  (actual rows=0)
Planning Time: 0.110 ms
Execution Time: 0.045 ms"""


def test_a_plan_names_its_scans_and_a_whole_large_table_read():
    statement = plans.Statement(sql="SELECT 1", plan=PLAN, execution_ms=0.045)
    assert statement.scans == [
        "Index Scan accounts_account_pkey",
        "Seq Scan usage_usageevent",
        "Index Only Scan usage_counter_key_once",
    ]
    assert statement.whole_large_tables == ["usage_usageevent"]


def test_the_plans_block_is_written_between_its_own_markers(tmp_path):
    statements = [
        plans.Statement(sql="SELECT  *\n FROM x", plan=PLAN, execution_ms=0.045),
        plans.Statement(
            sql="INSERT INTO y", plan="Insert on y\nExecution Time: 0.5 ms", execution_ms=0.5
        ),
    ]
    results = [plans.PathPlans("GET .../usage/", 200, statements)]
    block = plans.markdown(100_000, results)
    doc = f"# P\n\n{performance.BEGIN}\nfigures\n{performance.END}\n\n{plans.BEGIN}\nold\n{plans.END}\n"
    text = performance.doc_replace(doc, block, plans.BEGIN, plans.END)
    assert "old" not in text and "figures" in text  # the figures' block stays as it was
    assert "100,000 events" in text
    assert (
        "| GET .../usage/ | 200 | 2 | 0.55 ms | Index Only Scan usage_counter_key_once,"
        " Index Scan accounts_account_pkey, Seq Scan usage_usageevent | usage_usageevent |"
    ) in text
    assert "1. `SELECT * FROM x` (0.045 ms)" not in text  # the whole plans: their own file
    whole = plans.plans_document(100_000, results)
    assert "## GET .../usage/\n\n1. `SELECT * FROM x` (0.045 ms)\n\n```\nNested Loop" in whole


def test_cpu_per_request_is_what_each_kind_of_process_spent_between_two_snapshots():
    # given: a worker that spent 0.6 s, a PostgreSQL backend started in between (0.2 s), one
    # that exited (left out), the client 0.3 s, Redis nothing
    before = {
        "web workers": {10: 5.0},
        "PostgreSQL": {20: 1.0, 21: 3.0},
        "Redis": {30: 2.0},
        "client": {1: 7.0},
    }
    after = {
        "web workers": {10: 5.6},
        "PostgreSQL": {20: 1.0, 22: 0.2},
        "Redis": {30: 2.0},
        "client": {1: 7.3},
    }

    # when: 100 requests were sent in between
    spent = ingest.CpuMeter.per_request(before, after, 100)

    # then: milliseconds per request, by kind
    assert spent == pytest.approx(
        {"client": 3.0, "web workers": 6.0, "PostgreSQL": 2.0, "Redis": 0.0}
    )


def test_the_cpu_table_puts_each_path_beside_its_floor():
    # given: a floor costing 2 ms a request in all and a path costing 4
    def endpoint(name, floor):
        return ingest.Endpoint(name, "GET", "/", lambda _p, _c: [], floor)

    cpu = {"client": 1.0, "web workers": 0.5, "PostgreSQL": 0.0, "Redis": 0.5}
    figures = {
        "floor": ingest.Round(1000, 1, 2, cpu),
        "path": ingest.Round(
            500, 2, 4, {"client": 1.0, "web workers": 2.0, "PostgreSQL": 0.75, "Redis": 0.25}
        ),
    }

    # when
    table = ingest.cpu_table([endpoint("floor", None), endpoint("path", "floor")], figures)

    # then: the path costs 2 ms more, and CPU alone allows it half the floor's requests/s
    assert table[1:] == [
        ["floor", "1.00", "0.50", "0.00", "0.50", "2.00", "", ""],
        ["path", "1.00", "2.00", "0.75", "0.25", "4.00", "+2.00", "0.50"],
    ]


def test_the_batch_cpu_table_gives_the_ratio_cpu_alone_allows():
    # given: 10 batches; HTTP spent 1,000 ms of CPU in all, the SQL 500 ms
    spent = {
        "HTTP": {"client": 100.0, "web workers": 500.0, "PostgreSQL": 400.0},
        "hand-written SQL": {"client": 200.0, "PostgreSQL": 300.0},
    }

    # when
    table = ingest.batch_cpu_table(spent, 10)

    # then: per batch, and the SQL's total over each path's
    assert table[1:] == [
        ["HTTP", "10.0", "50.0", "40.0", "0.0", "100.0", "0.50"],
        ["hand-written SQL", "20.0", "0.0", "30.0", "0.0", "50.0", "1.00"],
    ]


def test_processes_are_read_with_their_parent_and_cpu_time():
    # when
    found = {pid: rest for pid, *rest in ingest.processes()}

    # then: this process is there, under its parent, with the CPU time it has spent so far
    _name, parent, seconds = found[os.getpid()]
    assert parent == os.getppid()
    assert seconds > 0
    assert ingest.process_stat(os.getpid())[1] == os.getppid()
