"""The bench's floors (bench/floors.py): served by the bench's URLs only, and doing nothing.

The bench itself never runs in the suite; these tests check that its floors are what
docs/performance.md says they are.
"""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from config import authentication
from tests.test_token_cache import shared_cache_settings

pytestmark = pytest.mark.django_db

PLAIN = "/bench/floor/plain/"
AUTHENTICATED = "/bench/floor/authenticated/"
UNCACHED = "/bench/floor/authenticated-uncached/"


def test_the_project_serves_no_floor(service_client):
    for path in (PLAIN, AUTHENTICATED, UNCACHED):
        assert service_client.get(path).status_code == 404


@pytest.fixture
def bench_urls(settings):
    settings.ROOT_URLCONF = "bench.urls"
    authentication._verified.clear()
    yield
    authentication._verified.clear()


def test_the_plain_floor_answers_json_without_a_query(bench_urls, django_assert_num_queries):
    with django_assert_num_queries(0):
        answer = APIClient().get(PLAIN)
    assert answer.status_code == 200
    assert answer.json() == {"ok": True}


@pytest.mark.parametrize("path", [AUTHENTICATED, UNCACHED])
def test_the_authenticated_floor_costs_the_credentials_alone(
    bench_urls, service_client, path, django_assert_num_queries
):
    # the token with its user and binding, then the user's permissions
    with django_assert_num_queries(2):
        read = service_client.get(path)
    with django_assert_num_queries(2):
        checked = service_client.post(path, {"metric": "text_tokens"}, format="json")
    assert (read.status_code, read.json()) == (200, {"ok": True})
    assert (checked.status_code, checked.json()) == (200, {"ok": True, "fields": 1})


@pytest.mark.parametrize("path", [AUTHENTICATED, UNCACHED])
def test_the_authenticated_floor_refuses_what_the_api_refuses(
    bench_urls, api_client, nobody_client, path
):
    anonymous = api_client.get(path)
    assert anonymous.status_code == 401
    assert anonymous.json() == {"detail": "Authentication credentials were not provided."}
    ungrouped = nobody_client.get(path)
    assert ungrouped.status_code == 403
    assert ungrouped.json() == {"detail": "You do not have permission to perform this action."}


@pytest.mark.redis
def test_the_authenticated_floor_costs_no_query_once_its_token_is_remembered(
    bench_urls, settings, service_client, django_assert_num_queries
):
    shared_cache_settings(settings, settings.CELERY_BROKER_URL)
    with django_assert_num_queries(2):
        assert service_client.get(AUTHENTICATED).status_code == 200
    with django_assert_num_queries(0):
        assert service_client.get(AUTHENTICATED).status_code == 200
    # the uncached floor reads the credentials every time
    with django_assert_num_queries(2):
        assert service_client.get(UNCACHED).status_code == 200
