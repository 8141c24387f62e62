"""The API docs page works without reaching any other host."""

from __future__ import annotations

import re

import pytest


@pytest.mark.django_db
def test_swagger_ui_loads_only_our_own_files(client):
    response = client.get("/api/v1/docs/")
    assert response.status_code == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', response.content.decode())
    assert any(a.endswith("swagger-ui-bundle.js") for a in assets)
    assert all(a.startswith("/static/") for a in assets), assets


@pytest.mark.django_db
def test_every_request_body_is_documented_as_required(client):
    # given: every operation that takes a body refuses a request without one (400)
    response = client.get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    # when
    bodies = {
        f"{method.upper()} {path}": operation["requestBody"].get("required", False)
        for path, item in response.json()["paths"].items()
        for method, operation in item.items()
        if "requestBody" in operation
    }
    # then
    assert bodies == {
        "PUT /api/v1/accounts/{id}/limits/": True,
        "PATCH /api/v1/accounts/{id}/limits/": True,
        "POST /api/v1/accounts/{id}/usage/check/": True,
        "POST /api/v1/accounts/{id}/usage/reservations/": True,
        "POST /api/v1/usage/events/": True,
        "PUT /api/v1/accounts/{id}/webhooks/": True,
    }
