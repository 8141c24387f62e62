"""The API keeps the promises of its own OpenAPI schema, under generated hostile input.

Schemathesis reads the schema that ``/api/v1/schema/`` serves and, for every operation,
sends the schema's examples, the boundary and invalid values its coverage phase derives
from the schema, and random valid and invalid requests to a live server, then runs every
one of its built-in checks on each answer: no 5xx, documented status codes, content types,
headers and bodies, valid input accepted, invalid input refused, authentication enforced,
405 for undocumented methods. Every operation runs once with a service token and once with
an account manager's token, each created as ops would create it (``create_service_token``,
``create_api_token``).

Path ids are drawn, most of the time, from two real accounts (one Enterprise, one not), so
that generated requests reach the code behind the 404. A few rules depend on stored data or
on the clock, or concern the keys of free-form objects, which no OpenAPI 3.0 schema can
express: :func:`keep_valid_cases_valid` teaches them to the generator of *valid* requests
only; invalid requests are sent as generated.
"""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import schemathesis
from django.contrib.auth.models import Group
from django.core.management import call_command
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, settings

from accounts.labels import VALUE as LABEL_VALUE
from accounts.models import Plan
from accounts.roles import ACCOUNT_MANAGERS
from notifications import hooks
from tests.factories import AccountFactory, UserFactory

# Per operation and generation phase: the whole module runs in about a minute on SQLite.
MAX_EXAMPLES = 100

# The schema's promises hold or not whatever the time: the hard instants of
# `make test-instants` leave this module out (marker ``timeless``); it is most of their time.
pytestmark = pytest.mark.timeless
ENTERPRISE_ID = uuid.UUID("3f0c6f8e-8d1a-4f57-9a55-6c1b1e0d2a01")
PRO_ID = uuid.UUID("3f0c6f8e-8d1a-4f57-9a55-6c1b1e0d2a02")
ACCOUNT_IDS = [str(ENTERPRISE_ID), str(PRO_ID)]


def served_schema() -> dict:
    """The document ``/api/v1/schema/`` serves (and ``manage.py spectacular`` writes)."""
    document = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(document, renderer_context={}))


schema = schemathesis.openapi.from_dict(
    served_schema(),
    config=schemathesis.Config.from_dict(
        {
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
            "dictionaries": {"accounts": {"values": ACCOUNT_IDS}},
            "parameters": {"path.id": {"dictionary": "accounts", "probability": 0.9}},
        }
    ),
)


def _limits_keep_valid(body: Any) -> None:
    """A limits document that breaks no rule whatever is stored (SPEC section 3).

    The rules the schema states in words only: warning < blocked when both are set (rule 3),
    a warning threshold needs a warning recipient, stored or given (rule 4), an address
    is once per list, compared without case, and those of scoped limits (SPEC 11.2). Metrics given get both thresholds, so that a
    ``PATCH`` cannot pair a new warning with a stored, lower blocked threshold.
    """
    if not isinstance(body, dict):
        return
    any_warning = _scoped_limits_keep_valid(body)
    limits = body.get("limits")
    for thresholds in limits.values() if isinstance(limits, dict) else []:
        if not isinstance(thresholds, dict):
            continue
        warning = thresholds.setdefault("warning", None)
        blocked = thresholds.setdefault("blocked", None)
        if isinstance(warning, int) and isinstance(blocked, int) and warning >= blocked:
            thresholds["warning"] = blocked - 1 if blocked > 0 else None
        any_warning = any_warning or thresholds["warning"] is not None
    recipients = body.get("recipients")
    if not isinstance(recipients, dict):
        recipients = None
    for level, entries in (recipients or {}).items():
        if isinstance(entries, list):
            seen: set[str] = set()
            recipients[level] = [
                entry
                for entry in entries
                if not isinstance(entry, dict)
                or not isinstance(entry.get("email"), str)
                or not (entry["email"].lower() in seen or seen.add(entry["email"].lower()))
            ]
    # A warning recipient list given empty may leave a stored warning threshold without one.
    if any_warning or (recipients is not None and recipients.get("warning") == []):
        if recipients is None:
            recipients = body["recipients"] = {}
        if not recipients.get("warning"):
            recipients["warning"] = [{"email": "pm@example.com", "language": "en"}]


def _scoped_limits_keep_valid(body: dict) -> bool:
    """Scoped limits that break no rule of SPEC 11.2 the schema states in words only:
    ``window_days`` with ``rolling`` alone, labels on a month, each line once, warning <
    blocked, and label values that match their pattern whole (a generated value may end in
    a newline, which ``$`` lets through). Returns whether a line has a warning threshold."""
    lines = body.get("scoped_limits")
    if not isinstance(lines, list):
        return False
    kept, seen = [], set()
    for line in lines:
        if not isinstance(line, dict):
            kept.append(line)
            continue
        if line.get("period") == "rolling":
            if not isinstance(line.get("window_days"), int):
                line["window_days"] = 7
        else:
            line["window_days"] = None
        labels = line.get("labels")
        if isinstance(labels, dict):
            for key, value in labels.items():
                if not isinstance(value, str) or not LABEL_VALUE.fullmatch(value):
                    labels[key] = "x"
        if line.get("period") == "month" and not labels:
            labels = line["labels"] = {"model": "x"}
        warning, blocked = line.get("warning"), line.get("blocked")
        if isinstance(warning, int) and isinstance(blocked, int) and warning >= blocked:
            line["warning"] = blocked - 1 if blocked > 0 else None
        identity = (
            line.get("metric"),
            line.get("period"),
            line.get("window_days"),
            # Left out and null are no labels, as {} is.
            tuple(sorted(labels.items())) if isinstance(labels, dict) else (),
        )
        if identity in seen:
            continue
        seen.add(identity)
        kept.append(line)
    body["scoped_limits"] = kept
    return any(isinstance(line, dict) and line.get("warning") is not None for line in kept)


def _event_keep_valid(event: Any) -> None:
    """An event of a real account that happened in the past (at most 5 minutes ahead)."""
    if not isinstance(event, dict):
        return
    if event.get("account") not in ACCOUNT_IDS:
        event["account"] = str(ENTERPRISE_ID)
    occurred_at = event.get("occurred_at")
    if isinstance(occurred_at, str):
        try:
            moment = datetime.fromisoformat(occurred_at)
        except ValueError:
            return
        if moment.tzinfo is not None and moment > datetime.now(UTC):
            event["occurred_at"] = (datetime.now(UTC) - timedelta(days=1)).isoformat()


def _webhooks_keep_valid(endpoints: list) -> list:
    """At most 10 endpoints, each URL once and resolving (``api`` makes every name public),
    each level once."""
    endpoints = endpoints[:10]
    for index, endpoint in enumerate(endpoints):
        if not isinstance(endpoint, dict):
            continue
        endpoint["url"] = f"https://hooks-{index}.example.com/usage"
        if isinstance(endpoint.get("levels"), list):
            endpoint["levels"] = list(dict.fromkeys(endpoint["levels"]))
    return endpoints


def _storable(value: Any) -> Any:
    """``value`` without null characters or lone surrogates in its strings and keys.

    The API refuses them anywhere in a JSON body (PostgreSQL cannot store the first, UTF-8
    cannot encode the second), as every operation's 400 says; OpenAPI 3.0 can say it of a
    plain string (``pattern``) but not of the keys of a free-form object (``metadata``).
    """
    if isinstance(value, str):
        return "".join(c for c in value if c != "\x00" and not "\ud800" <= c <= "\udfff")
    if isinstance(value, list):
        return [_storable(item) for item in value]
    if isinstance(value, dict):
        return {_storable(key): _storable(item) for key, item in value.items()}
    return value


@schema.hook
def map_case(context: schemathesis.HookContext, case: schemathesis.Case) -> schemathesis.Case:
    """keep_valid_cases_valid: valid requests also follow the rules no schema can express."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return case
    if isinstance(case.body, (dict, list)):
        case.body = _storable(case.body)
    if case.operation.path.endswith("/limits/"):
        _limits_keep_valid(case.body)
    elif case.operation.path.endswith("/webhooks/") and isinstance(case.body, list):
        case.body = _webhooks_keep_valid(case.body)
    elif case.operation.path == "/api/v1/usage/events/" and isinstance(case.body, dict):
        events = case.body.get("events")
        for event in events if isinstance(events, list) else [case.body]:
            _event_keep_valid(event)
    return case


keep_valid_cases_valid = map_case


def _token(command: str, name: str) -> str:
    """The key a token command prints alone on its last line."""
    out = io.StringIO()
    call_command(command, name, stdout=out)
    return out.getvalue().strip().splitlines()[-1]


@pytest.fixture(params=["service", "manager"])
def api(request, live_server, settings, monkeypatch) -> dict:
    """The live server's URL and the headers of a token of one kind, with two accounts.

    Valid events may carry any labels: the bound on label sets per day, which no schema
    can state, is lifted so that it never refuses them. Every host name of a webhook
    endpoint resolves to a public address, without calling any resolver.
    """
    settings.USAGE_MAX_LABEL_SETS = 10**9
    monkeypatch.setattr(hooks, "_resolve", lambda host, port: ["93.184.215.14"])
    if request.param == "service":
        key = _token("create_service_token", "llm-gateway")
    else:
        manager = UserFactory(username="pm")
        manager.groups.add(Group.objects.get(name=ACCOUNT_MANAGERS))
        key = _token("create_api_token", manager.username)
    AccountFactory(id=ENTERPRISE_ID)
    AccountFactory(id=PRO_ID, plan=Plan.PRO)
    return {"base_url": live_server.url, "headers": {"Authorization": f"Token {key}"}}


@schema.parametrize()
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_operation_keeps_the_schema_promises(case, api):
    case.call_and_validate(**api)


@pytest.mark.django_db
def test_the_schema_tested_is_the_schema_served(client):
    response = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    assert json.loads(response.content) == served_schema()
