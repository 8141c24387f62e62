"""The query plans of the hot paths, on the database the last ``ingest.py`` run left behind.

Serves each per-request path of ``ingest.py`` once, in process, through the real URL
configuration and views (authenticated as the bench's service user, the token's own
statement left out), on the account with the most events, and runs every SQL statement
the request makes under ``EXPLAIN (ANALYZE, BUFFERS)`` before it runs for real. Each
request runs in a transaction rolled back at its end, so the database is left as it was.

Prints, for each path, its statements with PostgreSQL's execution time, the scans they use
and whether one reads a whole large table (``Seq Scan`` on events or counters), then the
whole plans; ``--doc`` writes the same into docs/performance.md between the
``plans:begin`` and ``plans:end`` markers (what ``make bench`` does). Run from the project
root after ``ingest.py`` (``BENCH_DATABASE`` as for it):

    .venv/bin/python bench/plans.py [--doc docs/performance.md]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ingest import BATCH, CHECK_BODY, DB_NAME, Account, events_make, server_env  # noqa: E402
from performance import doc_replace  # noqa: E402

BEGIN = "<!-- plans:begin (written by `make bench`: edit bench/plans.py, not this block) -->"
END = "<!-- plans:end -->"
# Tables whose whole reading on a hot path would grow with the data.
LARGE = ("usage_usageevent", "usage_usagecounter", "usage_usagehourcounter")
SCAN = re.compile(
    r"((?:Parallel )?(?:Seq|Index|Index Only|Bitmap Heap|Bitmap Index) Scan)"
    r"(?: using (\w+))?(?: on (\w+))?"
)


@dataclass
class Statement:
    sql: str
    plan: str
    execution_ms: float

    @property
    def scans(self) -> list[str]:
        found = []
        for kind, index, table in SCAN.findall(self.plan):
            text = f"{kind} {index or table}".strip()
            if text not in found:
                found.append(text)
        return found

    @property
    def whole_large_tables(self) -> list[str]:
        return [
            t for kind, _i, t in SCAN.findall(self.plan) if kind.endswith("Seq Scan") and t in LARGE
        ]

    @property
    def summary(self) -> str:
        text = " ".join(self.sql.split())
        return text if len(text) <= 90 else text[:87] + "..."


@dataclass
class PathPlans:
    name: str
    status: int
    statements: list[Statement] = field(default_factory=list)


def _setup() -> None:
    os.environ.update(server_env(CACHE_URL="locmemcache://", ALLOWED_HOSTS="testserver"))
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    import django

    django.setup()


def _planned(collected: list[Statement]) -> Any:
    """An ``execute_wrapper`` that plans each statement (in a savepoint rolled back, so a
    write is not done twice) before running it."""

    def wrapper(execute: Any, sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
        words = sql.lstrip().split(None, 1)
        if (
            not many
            and words
            and words[0].upper() in {"SELECT", "INSERT", "UPDATE", "DELETE", "WITH"}
        ):
            raw = context["cursor"].cursor  # the driver's cursor: no wrapper runs again
            raw.execute("SAVEPOINT bench_plan")
            raw.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            lines = [row[0] for row in raw.fetchall()]
            raw.execute("ROLLBACK TO SAVEPOINT bench_plan")
            match = re.search(r"Execution Time: ([\d.]+) ms", "\n".join(lines))
            collected.append(
                Statement(
                    sql=sql,
                    plan="\n".join(lines),
                    execution_ms=float(match.group(1)) if match else 0.0,
                )
            )
        return execute(sql, params, many, context)

    return wrapper


def paths(
    account_id: str, zone: str, run: int
) -> list[tuple[str, str, str, dict[str, Any] | None]]:
    """The paths of ``ingest.py`` part c and a batch of part a's kind (on the account
    alone), with new ids for run ``run``."""
    now = datetime.now(UTC).replace(microsecond=0)
    event = {
        "event_id": f"plans-{now.timestamp():.0f}-{run}",
        "account": account_id,
        "metric": CHECK_BODY["metric"],
        "quantity": 1,
        "occurred_at": now.isoformat(),
        "source": "bench",
        "labels": CHECK_BODY["labels"],
    }
    reservation = {
        "reservation_id": f"plans-{now.timestamp():.0f}-{run}",
        **CHECK_BODY,
        "quantity": 1,
        "ttl_seconds": 60,
    }
    base = f"/api/v1/accounts/{account_id}"
    account = Account(id=uuid.UUID(account_id), zone=ZoneInfo(zone))
    made = events_make([account], f"plans{run}", BATCH, now, timedelta(hours=48))
    batch = {"events": [e.as_json() for e in made]}
    return [
        ("GET .../usage/", "GET", f"{base}/usage/", None),
        ("GET .../capacities/", "GET", f"{base}/capacities/", None),
        ("pre-flight POST .../usage/check/", "POST", f"{base}/usage/check/", CHECK_BODY),
        ("single-event POST /usage/events/", "POST", "/api/v1/usage/events/", event),
        (
            "reservation POST .../usage/reservations/",
            "POST",
            f"{base}/usage/reservations/",
            reservation,
        ),
        ("batch POST /usage/events/, 1,000 events", "POST", "/api/v1/usage/events/", batch),
    ]


def measure() -> tuple[str, int, list[PathPlans]]:
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from rest_framework.test import APIClient

    from config.authentication import api_permissions

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT e.account_id, a.timezone FROM usage_usageevent e"
            " JOIN accounts_account a ON a.id = e.account_id"
            " GROUP BY e.account_id, a.timezone ORDER BY count(*) DESC LIMIT 1"
        )
        row = cursor.fetchone()
        cursor.execute("SELECT count(*) FROM usage_usageevent")
        (total,) = cursor.fetchone()
    if row is None:
        raise SystemExit(f"{DB_NAME} holds no events: run bench/ingest.py first")
    account_id, zone = str(row[0]), row[1]
    user = get_user_model().objects.filter(groups__name="Usage services").first()
    if user is None:
        raise SystemExit(f"{DB_NAME} has no service user: run bench/ingest.py first")
    # As a token verified by the token cache brings them: no permissions query per request.
    api_permissions(user)
    client = APIClient()
    client.force_authenticate(user=user)
    results = []
    # Each path twice, the first unplanned: the second meets what a running worker has
    # (the lines it remembers, warm buffers).
    for warm, measured in zip(paths(account_id, zone, 0), paths(account_id, zone, 1), strict=True):
        name, method, path, _body = measured
        collected: list[Statement] = []
        for run, body in ((None, warm[3]), (collected, measured[3])):
            with transaction.atomic():
                if run is None:
                    response = _request(client, method, path, body)
                else:
                    with connection.execute_wrapper(_planned(run)):
                        response = _request(client, method, path, body)
                transaction.set_rollback(True)
        results.append(PathPlans(name=name, status=response.status_code, statements=collected))
    return account_id, total, results


def _request(client: Any, method: str, path: str, body: dict[str, Any] | None) -> Any:
    if method == "GET":
        return client.get(path)
    return client.post(path, data=json.dumps(body), content_type="application/json")


def summary(total: int, results: list[PathPlans]) -> list[str]:
    """The table of the paths: statements, PostgreSQL's time, scans, whole large tables."""
    lines = [
        f"Written by `make bench` (bench/plans.py) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC,"
        f" on the database the run left: {total:,} events, the account read having the most"
        " of them. Each request once after a first unplanned one, in process, authenticated"
        " without its token's statement (as the token cache does); each statement under"
        " `EXPLAIN (ANALYZE, BUFFERS)`, the request rolled back. Time: PostgreSQL's execution"
        " time (with EXPLAIN's own overhead), no round trip.",
        "",
        "| path | status | statements | PostgreSQL time | scans | whole large table read |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        scans = sorted({s for st in result.statements for s in st.scans})
        whole = sorted({t for st in result.statements for t in st.whole_large_tables})
        lines.append(
            f"| {result.name} | {result.status} | {len(result.statements)} |"
            f" {sum(s.execution_ms for s in result.statements):.2f} ms |"
            f" {', '.join(scans) or '-'} | {', '.join(whole) or 'none'} |"
        )
    return lines


def markdown(total: int, results: list[PathPlans]) -> str:
    """The block of docs/performance.md: the table, and where the whole plans are."""
    return "\n".join(
        [
            BEGIN,
            "",
            "## Query plans of the hot paths",
            "",
            *summary(total, results),
            "",
            "Every statement with its whole plan: [query-plans.md](query-plans.md).",
            "",
            END,
        ]
    )


def plans_document(total: int, results: list[PathPlans]) -> str:
    """docs/query-plans.md: the table, then each statement of each path with its plan."""
    lines = ["# Query plans of the hot paths", "", *summary(total, results), ""]
    for result in results:
        lines += [f"## {result.name}", ""]
        for number, statement in enumerate(result.statements, 1):
            lines += [
                f"{number}. `{statement.summary.replace('`', '')}`"
                f" ({statement.execution_ms:.3f} ms)",
                "",
                "```",
                statement.plan,
                "```",
                "",
            ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--doc", type=Path, help="also write the plans into this file")
    args = parser.parse_args()
    _setup()
    _account_id, total, results = measure()
    whole = plans_document(total, results)
    print(whole)
    failed = [r.name for r in results if r.status >= 400]
    if failed:
        print(f"answered an error: {', '.join(failed)}", file=sys.stderr)
    if args.doc:
        args.doc.write_text(doc_replace(args.doc.read_text(), markdown(total, results), BEGIN, END))
        plans_file = args.doc.parent / "query-plans.md"
        plans_file.write_text(whole + "\n")
        print(f"{args.doc}: the plans block rewritten; {plans_file}: the plans", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
