"""The API keeps the promises of its own OpenAPI schema, under generated hostile input.

Schemathesis reads the schema that ``/api/v1/schema/`` serves and, for every operation,
sends the schema's examples, the boundary and invalid values its coverage phase derives
from the schema, and random valid and invalid requests to a live server, then runs every
one of its built-in checks on each answer: no 5xx, documented status codes, content types,
headers and bodies, valid input accepted, invalid input refused, authentication enforced,
405 for undocumented methods. Every operation runs once with a service token and once with
an account manager's token, each created as ops would create it (``create_service_token``,
``create_api_token``).

Path ids and event accounts are drawn, most of the time, from two real accounts (one
Enterprise, one not), so that generated requests reach the code behind the 404.
"""

from __future__ import annotations

import io
import json
import uuid

import pytest
import schemathesis
from django.contrib.auth.models import Group
from django.core.management import call_command
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, settings

from accounts.models import Plan
from accounts.roles import ACCOUNT_MANAGERS
from tests.factories import AccountFactory, UserFactory

# Per operation and generation phase: the whole module runs in about a minute on SQLite.
MAX_EXAMPLES = 25
ENTERPRISE_ID = uuid.UUID("3f0c6f8e-8d1a-4f57-9a55-6c1b1e0d2a01")
PRO_ID = uuid.UUID("3f0c6f8e-8d1a-4f57-9a55-6c1b1e0d2a02")


def served_schema() -> dict:
    """The document ``/api/v1/schema/`` serves (and ``manage.py spectacular`` writes)."""
    document = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(document, renderer_context={}))


schema = schemathesis.openapi.from_dict(
    served_schema(),
    config=schemathesis.Config.from_dict(
        {
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True},
            "dictionaries": {"accounts": {"values": [str(ENTERPRISE_ID), str(PRO_ID)]}},
            "parameters": {
                name: {"dictionary": "accounts", "probability": 0.9}
                for name in ("path.id", "body.account", "body.events[*].account")
            },
        }
    ),
)


def _token(command: str, name: str) -> str:
    """The key a token command prints alone on its last line."""
    out = io.StringIO()
    call_command(command, name, stdout=out)
    return out.getvalue().strip().splitlines()[-1]


@pytest.fixture(params=["service", "manager"])
def api(request, live_server) -> dict:
    """The live server's URL and the headers of a token of one kind, with two accounts."""
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
