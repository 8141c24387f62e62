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
