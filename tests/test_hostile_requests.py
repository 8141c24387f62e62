"""Hostile requests answer a 4xx with a clear message, never a 500, and record nothing.

Null characters and lone surrogates anywhere in the text of a request, JSON nested too
deep, bodies past the size limit, chunked bodies, methods a path does not serve, garbage
posted to the e-mail provider's tracking URL and bad page numbers.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from http.client import HTTPConnection
from pathlib import Path

import pytest
from django.urls import reverse
from drf_spectacular.generators import SchemaGenerator
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from accounts.models import Recipient
from config.parsers import json_too_deep
from notifications.models import Delivery, EarlyTrackingEvent
from tests.factories import AccountFactory
from tests.notifications.factories import DeliveryFactory
from usage.models import UsageEvent

pytestmark = pytest.mark.django_db

EVENTS = "/api/v1/usage/events/"
ACCOUNTS = "/api/v1/accounts/"
NULL = "Null characters are not allowed."
SURROGATE = "Lone surrogate characters are not allowed."
TOO_DEEP = "JSON nested deeper than 32 levels is not accepted."
BAD_PAGE = "A valid page number is required: a whole number from 1 to 2147483647."
ROOT = Path(__file__).resolve().parents[1]


def event(account, event_id="e-1", **extra):
    return {
        "event_id": event_id,
        "account": str(account.pk),
        "metric": "text_tokens",
        "quantity": 10,
        **extra,
    }


def post_json(client, url: str, text: str, method: str = "post", **extra):
    """Send ``text`` as it is: ``json.dumps`` would refuse nothing we need to send."""
    return getattr(client, method)(url, text, content_type="application/json", **extra)


# --- 1. Null characters and lone surrogates ---


@pytest.mark.parametrize(
    ("query", "field", "message"),
    [
        ("search=a%00b", "search", NULL),
        ("search=%00", "search", NULL),
        ("page=1%00", "page", NULL),
    ],
)
def test_a_null_character_in_a_query_parameter_of_the_api_is_a_400_keyed_by_name(
    manager_client, query, field, message
):
    # given
    AccountFactory(name="a b")
    # when
    response = manager_client.get(f"{ACCOUNTS}?{query}")
    # then
    assert response.status_code == 400
    assert response.json() == {field: [message]}


def test_a_null_character_in_the_period_of_usage_is_a_400(manager_client):
    account = AccountFactory()

    response = manager_client.get(f"{ACCOUNTS}{account.pk}/usage/?period=2026-11%00")

    assert response.status_code == 400
    assert response.json() == {"period": [NULL]}


def test_a_null_character_in_a_query_parameter_name_is_a_400(manager_client):
    response = manager_client.get(f"{ACCOUNTS}?se%00arch=a")

    assert response.status_code == 400
    assert response.json() == {
        "non_field_errors": [
            "Query parameter names may not contain null characters or lone surrogates."
        ]
    }


@pytest.mark.parametrize(
    "url",
    [
        "/admin/accounts/account/?q=a%00b",
        "/admin/usage/usageevent/?q=%00",
        "/admin/notifications/delivery/?q=x%00",
        "/admin/auth/user/?q=%00",
    ],
)
def test_a_null_character_in_the_search_of_an_admin_list_is_a_400(admin_client, url):
    response = admin_client.get(url)

    assert response.status_code == 400
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content.decode() == (
        "Bad request: null characters and lone surrogates are not allowed in the query string."
    )


def test_an_admin_list_still_answers_an_ordinary_search(admin_client):
    AccountFactory(name="Acme")

    response = admin_client.get("/admin/accounts/account/?q=Acme")

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("HTTP_AUTHORIZATION", "Authorization"),
        ("HTTP_X_REQUEST_ID", "X-Request-Id"),
        ("HTTP_ACCEPT_LANGUAGE", "Accept-Language"),
        ("HTTP_COOKIE", "Cookie"),
    ],
)
def test_a_null_character_in_a_header_is_a_400_keyed_by_the_header(api_client, header, name):
    response = api_client.get(ACCOUNTS, **{header: "Token abc\x00def"})

    assert response.status_code == 400
    assert response.json() == {"headers": {name: [NULL]}}


def test_a_null_character_in_a_token_is_a_400_even_on_a_post(api_client):
    account = AccountFactory()

    response = api_client.post(
        EVENTS, event(account), format="json", HTTP_AUTHORIZATION="Token \x00"
    )

    assert response.status_code == 400
    assert response.json() == {"headers": {"Authorization": [NULL]}}
    assert not UsageEvent.objects.exists()


@pytest.mark.parametrize(
    ("escaped", "message"), [("\\u0000", NULL), ("\\ud800", SURROGATE), ("\\uDFFF", SURROGATE)]
)
@pytest.mark.parametrize("field", ["event_id", "source"])
def test_a_bad_character_in_a_string_of_an_event_is_a_400_keyed_by_field(
    service_client, escaped, message, field
):
    # given
    account = AccountFactory()
    body = json.dumps(event(account, source="gateway")).replace(
        f'"{field}": "', f'"{field}": "x{escaped}', 1
    )
    # when
    response = post_json(service_client, EVENTS, body)
    # then
    assert response.status_code == 400
    assert response.json() == {field: [message]}
    assert not UsageEvent.objects.exists()


@pytest.mark.parametrize(
    ("metadata", "errors"),
    [
        ('{"model": "a\\u0000"}', {"metadata": {"model": [NULL]}}),
        ('{"tags": ["ok", "\\ud83d"]}', {"metadata": {"tags": {"1": [SURROGATE]}}}),
        (
            '{"mo\\u0000del": "large"}',
            {"metadata": ["Keys may not contain null characters or lone surrogates."]},
        ),
    ],
)
def test_a_bad_character_in_metadata_is_a_400_keyed_by_its_path_in_a_batch(
    service_client, metadata, errors
):
    # given: the second event of a batch carries it
    account = AccountFactory()
    good = json.dumps(event(account, "e-0"))
    bad = json.dumps(event(account, "e-1", metadata={})).replace("{}", metadata)
    # when
    response = post_json(service_client, EVENTS, f'{{"events": [{good}, {bad}]}}')
    # then
    assert response.status_code == 400
    assert response.json() == {"events": {"1": errors}}
    assert not UsageEvent.objects.exists()


def test_a_well_paired_surrogate_escape_is_an_ordinary_character(service_client):
    account = AccountFactory()
    body = json.dumps(event(account, metadata={"emoji": "🙂"}))  # sent as "\ud83d\ude42"

    response = post_json(service_client, EVENTS, body)

    assert response.status_code == 201
    assert UsageEvent.objects.get().metadata == {"emoji": "🙂"}


def test_a_null_character_in_a_recipient_of_the_limits_document_is_a_400(manager_client):
    # given
    account = AccountFactory()
    body = (
        '{"limits": {}, "recipients": {"warning": [], '
        '"blocked": [{"email": "ops\\u0000@example.com", "language": "en"}]}}'
    )
    # when
    response = post_json(manager_client, f"{ACCOUNTS}{account.pk}/limits/", body, method="put")
    # then
    assert response.status_code == 400
    assert response.json() == {"recipients": {"blocked": {"0": {"email": [NULL]}}}}
    assert not Recipient.objects.exists()


def test_a_null_character_in_the_metric_of_a_check_is_a_400(service_client):
    account = AccountFactory()

    response = post_json(
        service_client, f"{ACCOUNTS}{account.pk}/usage/check/", '{"metric": "\\u0000"}'
    )

    assert response.status_code == 400
    assert response.json() == {"metric": [NULL]}


# --- 2. Depth ---


def nested(depth: int) -> str:
    """A JSON object ``depth`` levels deep (the outermost object is level 1)."""
    return '{"a": ' * (depth - 1) + "{}" + "}" * (depth - 1)


def test_an_event_nested_32_levels_deep_is_recorded(service_client):
    # given: the event is level 1, its metadata level 2, 30 more inside
    account = AccountFactory()
    body = json.dumps(event(account, metadata={})).replace("{}", nested(31))
    # when
    response = post_json(service_client, EVENTS, body)
    # then
    assert response.status_code == 201
    assert UsageEvent.objects.count() == 1


@pytest.mark.parametrize("depth", [33, 1000, 100_000])
def test_json_nested_deeper_than_32_levels_is_a_400_naming_the_limit(service_client, depth):
    account = AccountFactory()
    body = json.dumps(event(account, metadata={})).replace("{}", nested(depth - 1))

    response = post_json(service_client, EVENTS, body)

    assert response.status_code == 400
    assert response.json() == {"detail": TOO_DEEP}
    assert not UsageEvent.objects.exists()


@pytest.mark.parametrize(
    "body",
    [
        "[" * 100_000,
        "[" * 40 + "]" * 40,
        '{"a": ' + "[" * 50_000 + "1" + "]" * 50_000 + "}",
    ],
)
def test_deep_arrays_are_refused_on_the_limits_endpoint_too(manager_client, body):
    account = AccountFactory()

    response = post_json(manager_client, f"{ACCOUNTS}{account.pk}/limits/", body, method="put")

    assert response.status_code == 400
    assert response.json() == {"detail": TOO_DEEP}


def test_brackets_inside_strings_do_not_count_as_depth(service_client):
    # given: 100 opening brackets, and escaped quotes, inside a string
    account = AccountFactory()
    body = json.dumps(event(account, metadata={"text": '\\"[{' * 100}))
    # when
    response = post_json(service_client, EVENTS, body)
    # then
    assert response.status_code == 201


@pytest.mark.parametrize("body", ["[" * 10 + "}", "]]]]", '{"a": "[[[['])
def test_malformed_json_with_unbalanced_brackets_is_a_parse_error(service_client, body):
    response = post_json(service_client, EVENTS, body)

    assert response.status_code == 400
    assert response.json()["detail"].startswith("JSON parse error - ")


# --- 3. Size ---


def test_a_batch_of_1000_events_each_with_8_kib_of_metadata_is_accepted(service_client):
    # given: the largest batch the contract allows
    account = AccountFactory()
    filler = "x" * (8192 - len('{"note":""}'))
    batch = [event(account, f"e-{i:04d}", metadata={"note": filler}) for i in range(1000)]
    body = json.dumps({"events": batch})
    assert len(body) > 1000 * 8192
    # when
    response = post_json(service_client, EVENTS, body)
    # then
    assert response.status_code == 201, response.content[:300]
    assert response.json()["accepted"] == 1000


def test_the_default_body_limit_is_12_mib_and_django_reads_that_much(settings):
    assert settings.REQUEST_BODY_MAX_BYTES == 12 * 1024 * 1024
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE >= settings.REQUEST_BODY_MAX_BYTES


def test_a_body_past_the_limit_is_a_413_naming_the_limit(service_client, settings):
    # given
    settings.REQUEST_BODY_MAX_BYTES = 1000
    account = AccountFactory()
    body = json.dumps(event(account, metadata={"note": "x" * 1000}))
    # when
    response = post_json(service_client, EVENTS, body)
    # then
    assert response.status_code == 413
    assert response.json() == {
        "detail": "The request body is larger than the limit of 1000 bytes.",
    }
    assert not UsageEvent.objects.exists()


def test_a_body_at_the_limit_is_read(service_client, settings):
    account = AccountFactory()
    body = json.dumps(event(account))
    settings.REQUEST_BODY_MAX_BYTES = len(body)

    response = post_json(service_client, EVENTS, body)

    assert response.status_code == 201


def test_a_content_length_past_the_limit_is_refused_before_the_body_is_read(api_client):
    # given: the header alone decides, nothing of the body is read
    payload = io.BytesIO(b"{}")
    # when
    response = api_client.request(
        PATH_INFO=EVENTS,
        REQUEST_METHOD="POST",
        CONTENT_TYPE="application/json",
        CONTENT_LENGTH=str(10**12),
        **{"wsgi.input": payload},
    )
    # then
    assert response.status_code == 413
    assert response.json() == {
        "detail": "The request body is larger than the limit of 12582912 bytes."
    }
    assert payload.tell() == 0


@pytest.mark.parametrize("value", ["abc", "-1", "1e3"])
def test_an_invalid_content_length_is_a_400(api_client, value):
    response = api_client.generic(
        "POST", EVENTS, "{}", content_type="application/json", CONTENT_LENGTH=value
    )

    assert response.status_code == 400
    assert response.json() == {
        "headers": {"Content-Length": ["A whole number of bytes, 0 or more, is required."]}
    }


def test_an_admin_post_past_the_limit_is_a_plain_413(admin_client, settings):
    settings.REQUEST_BODY_MAX_BYTES = 100

    response = admin_client.post("/admin/accounts/account/add/", {"name": "x" * 200})

    assert response.status_code == 413
    assert response.content.decode() == "The request body is larger than the limit of 100 bytes."


def chunked_environ(client, body: bytes, *, terminated: bool, path: str = EVENTS) -> dict:
    """A WSGI environ as a server gives a chunked request: no Content-Length."""
    environ = {
        "PATH_INFO": path,
        "REQUEST_METHOD": "POST",
        "CONTENT_TYPE": "application/json",
        "HTTP_TRANSFER_ENCODING": "chunked",
        "wsgi.input": io.BytesIO(body),
    }
    if terminated:
        environ["wsgi.input_terminated"] = True
    return environ


def test_a_chunked_body_is_read_when_the_server_gives_the_whole_stream(service_client):
    account = AccountFactory()
    body = json.dumps(event(account)).encode()

    response = service_client.request(**chunked_environ(service_client, body, terminated=True))

    assert response.status_code == 201
    assert UsageEvent.objects.get().event_id == "e-1"


def test_a_chunked_put_of_limits_is_not_taken_for_an_empty_body(manager_client):
    # given: an empty body is refused by the limits endpoint; this one is not empty
    account = AccountFactory()
    environ = chunked_environ(
        manager_client,
        b'{"limits": {"text_tokens": {"blocked": 10}}}',
        terminated=True,
        path=f"{ACCOUNTS}{account.pk}/limits/",
    )
    environ["REQUEST_METHOD"] = "PUT"
    # when
    response = manager_client.request(**environ)
    # then
    assert response.status_code == 200
    assert response.json()["limits"]["text_tokens"] == {"warning": None, "blocked": 10}


def test_a_chunked_body_past_the_limit_is_a_413(service_client, settings):
    settings.REQUEST_BODY_MAX_BYTES = 100
    account = AccountFactory()
    body = json.dumps(event(account, metadata={"note": "x" * 100})).encode()

    response = service_client.request(**chunked_environ(service_client, body, terminated=True))

    assert response.status_code == 413
    assert response.json() == {"detail": "The request body is larger than the limit of 100 bytes."}
    assert not UsageEvent.objects.exists()


def test_a_chunked_body_from_a_server_that_cannot_end_it_is_a_411(service_client):
    account = AccountFactory()
    body = json.dumps(event(account)).encode()

    response = service_client.request(**chunked_environ(service_client, body, terminated=False))

    assert response.status_code == 411
    assert response.json() == {
        "detail": "A Content-Length header is required: this server cannot read a chunked body."
    }
    assert not UsageEvent.objects.exists()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def gunicorn_url(tmp_path):
    """A real gunicorn serving the project on 127.0.0.1, with a body limit of 4096 bytes."""
    port = free_port()
    log = tmp_path / "gunicorn.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "REQUEST_BODY_MAX_BYTES": "4096",
        "DEBUG": "0",
    }
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{port}"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        for _ in range(300):  # bounded wait for the port to open (30 s)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None:
                    pytest.fail(f"gunicorn exited: {log.read_text()}")
                time.sleep(0.1)
        else:
            pytest.fail("gunicorn did not open its port")
        yield port
    finally:
        # Stops only the process this fixture started.
        process.terminate()
        process.wait(timeout=30)


def post_chunked(port: int, path: str, chunks: list[bytes], headers: dict[str, str]):
    connection = HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, body=iter(chunks), headers=headers, encode_chunked=True)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_gunicorn_hands_a_chunked_body_to_the_view_and_refuses_one_past_the_limit(gunicorn_url):
    # given: the language switch reads its form body and needs no database
    token = "a" * 32
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Transfer-Encoding": "chunked",
        "Cookie": f"csrftoken={token}",
    }
    form = f"csrfmiddlewaretoken={token}&language=fr&next=/admin/".encode()
    # when
    small = post_chunked(gunicorn_url, "/i18n/setlang/", [form[:10], form[10:]], headers)
    large = post_chunked(
        gunicorn_url, "/api/v1/usage/events/", [b"x" * 1024] * 5, {**headers, "Cookie": ""}
    )
    # then
    status, response_headers, _ = small
    assert status == 302
    assert "django_language=fr" in response_headers["Set-Cookie"]
    assert response_headers["Location"] == "/admin/"
    assert large[0] == 413
    assert json.loads(large[2]) == {
        "detail": "The request body is larger than the limit of 4096 bytes."
    }


# --- 4. Methods ---


@pytest.mark.parametrize(
    ("client_name", "method", "url", "allow"),
    [
        ("service_client", "delete", EVENTS, "POST, OPTIONS"),
        ("service_client", "get", EVENTS, "POST, OPTIONS"),
        ("service_client", "put", "{account}/usage/check/", "POST, OPTIONS"),
        ("manager_client", "delete", "{account}/limits/", "GET, PUT, PATCH, HEAD, OPTIONS"),
        ("manager_client", "post", ACCOUNTS, "GET, HEAD, OPTIONS"),
        ("nobody_client", "delete", EVENTS, "POST, OPTIONS"),
    ],
)
def test_a_method_a_path_does_not_serve_is_a_405_with_allow(
    request, client_name, method, url, allow
):
    # given
    account = AccountFactory()
    client = request.getfixturevalue(client_name)
    # when
    response = getattr(client, method)(url.format(account=f"{ACCOUNTS}{account.pk}"))
    # then
    assert response.status_code == 405
    assert response.json() == {"detail": f'Method "{method.upper()}" not allowed.'}
    assert response["Allow"] == allow


def test_an_anonymous_request_with_a_method_not_served_is_still_a_401(api_client):
    response = api_client.delete(EVENTS)

    assert response.status_code == 401


@pytest.mark.parametrize(
    ("client_name", "url", "status"),
    [
        ("service_client", EVENTS, 200),
        ("service_client", "{account}/usage/check/", 200),
        ("manager_client", "{account}/limits/", 200),
        ("manager_client", EVENTS, 403),
        ("nobody_client", EVENTS, 403),
        ("api_client", EVENTS, 401),
    ],
)
def test_options_is_allowed_to_whoever_may_use_the_path(request, client_name, url, status):
    account = AccountFactory()
    client = request.getfixturevalue(client_name)

    response = client.options(url.format(account=f"{ACCOUNTS}{account.pk}"))

    assert response.status_code == status


# --- 5. The e-mail provider's tracking URL ---

TRACKING = "/anymail/postmark/tracking/"
SECRET = "anymail-user:s3cret-pass"


@pytest.fixture
def postmark(settings) -> dict[str, str]:
    settings.EMAIL_BACKEND = "anymail.backends.postmark.EmailBackend"
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "server-token", "WEBHOOK_SECRET": SECRET}
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(SECRET.encode()).decode()}


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "",
        "[1, 2]",
        '"text"',
        "null",
        '{"RecordType": "Delivery", "MessageID": {"a": 1}}',
        '{"RecordType": "Bounce", "MessageID": ["x"], "Description": 5}',
        '{"RecordType": "Delivery", "MessageID": "m\\u0000"}',
        '{"RecordType": "Bounce", "MessageID": "m-1", "Description": "\\ud800"}',
        '{"RecordType": "Delivery", "MessageID": ' + "[" * 5000 + "]" * 5000 + "}",
    ],
)
def test_garbage_posted_to_the_tracking_url_is_a_json_400_and_changes_nothing(
    client, postmark, body
):
    # given
    delivery = DeliveryFactory(status=Delivery.Status.SENT, esp_message_id="m-1")
    # when
    response = client.post(TRACKING, body, content_type="application/json", **postmark)
    # then
    assert response.status_code == 400
    assert response.json() == {
        "detail": "The tracking event could not be read: it is not a postmark event."
    }
    delivery.refresh_from_db()
    assert delivery.status == Delivery.Status.SENT
    assert not EarlyTrackingEvent.objects.exists()


def test_garbage_without_the_secret_is_still_refused_as_unauthenticated(client, postmark):
    response = client.post(TRACKING, "not json", content_type="application/json")

    assert response.status_code == 400
    assert response.json() == {"detail": "The tracking request could not be authenticated."}


def test_without_a_secret_the_tracking_url_is_still_not_found(client, postmark, settings):
    settings.ANYMAIL = {"POSTMARK_SERVER_TOKEN": "server-token"}

    response = client.post(TRACKING, "not json", content_type="application/json", **postmark)

    assert response.status_code == 404


# --- 6. Pages ---


@pytest.mark.parametrize(
    "page", ["0", "-1", "abc", "1.5", "99999999999999999999", "100000000000000000001", "last"]
)
def test_a_bad_page_number_is_a_400(manager_client, page):
    AccountFactory()

    response = manager_client.get(f"{ACCOUNTS}?page={page}")

    assert response.status_code == 400
    assert response.json() == {"page": [BAD_PAGE]}


def test_a_page_past_the_end_is_still_a_404(manager_client):
    AccountFactory()

    response = manager_client.get(f"{ACCOUNTS}?page=2")

    assert response.status_code == 404
    assert response.json() == {"detail": "Invalid page."}


def test_the_first_page_is_served(manager_client):
    account = AccountFactory()

    response = manager_client.get(f"{ACCOUNTS}?page=1")

    assert response.status_code == 200
    assert [row["id"] for row in response.json()["results"]] == [str(account.pk)]


# --- 7. The OpenAPI schema ---


@pytest.fixture
def schema() -> dict:
    return SchemaGenerator().get_schema(request=None, public=True)


def operations(schema: dict):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method in {"get", "put", "patch", "post", "delete"}:
                yield path, method, operation


def test_every_operation_documents_the_request_limits(schema):
    for path, method, operation in operations(schema):
        responses = operation["responses"]
        assert {"400", "405", "411", "413"} <= set(responses), (path, method)
        assert "Allow" in responses["405"]["headers"], (path, method)
        assert "12582912" in responses["413"]["description"], (path, method)


def test_every_string_parameter_refuses_null_characters(schema):
    strings = [
        (path, parameter["name"])
        for path, _method, operation in operations(schema)
        for parameter in operation.get("parameters", [])
        if parameter["schema"].get("type") == "string"
    ]
    assert ("/api/v1/accounts/", "search") in strings
    for path, _method, operation in operations(schema):
        for parameter in operation.get("parameters", []):
            if parameter["schema"].get("type") == "string":
                # Ours, or the parameter's own stricter pattern (a period), with no null.
                pattern = parameter["schema"]["pattern"]
                assert pattern == r"^[^\u0000]*$" or "\\u0000" not in pattern, (path, parameter)
                assert re.search(pattern.replace(r"\u0000", "\0"), "2026-11\0") is None


def test_the_page_parameter_and_its_400_and_404_are_documented(schema):
    operation = schema["paths"]["/api/v1/accounts/"]["get"]
    page = next(p for p in operation["parameters"] if p["name"] == "page")
    assert page["schema"] == {"type": "integer", "minimum": 1, "maximum": 2147483647}
    assert "400" in operation["responses"]
    assert "404" in operation["responses"]


def test_the_schema_hooks_keep_the_enum_hook(settings):
    hooks = settings.SPECTACULAR_SETTINGS["POSTPROCESSING_HOOKS"]
    assert hooks[0] == "drf_spectacular.hooks.postprocess_schema_enums"
    assert "config.schema.postprocess_request_limits" in hooks


def test_the_served_schema_answers(manager_client):
    response = manager_client.get(reverse("schema"), HTTP_ACCEPT="application/json")

    assert response.status_code == 200


# --- The depth scan, against the depth of what json.loads decodes ---

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\\\ ab\n\u00e9'),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(alphabet='[]{}"\\\\ a', max_size=4), children, max_size=3)
    ),
    max_leaves=60,
)


def depth_of(value) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


@given(value=json_values, wrap=st.integers(min_value=0, max_value=40))
@hypothesis_settings(max_examples=300, deadline=None)
def test_the_depth_scan_counts_what_json_decodes(value, wrap):
    # given: a value wrapped in up to 40 arrays, strings full of brackets, quotes, escapes
    for _ in range(wrap):
        value = [value]
    text = json.dumps(value, ensure_ascii=False)
    # when / then
    assert json_too_deep(text, 32) == (depth_of(value) > 32)


def test_refusals_speak_the_language_of_the_request(service_client, settings):
    # given
    settings.REQUEST_BODY_MAX_BYTES = 10
    # when
    too_large = service_client.post(
        EVENTS, {"events": []}, format="json", HTTP_ACCEPT_LANGUAGE="fr"
    )
    null = service_client.get(f"{ACCOUNTS}?search=%00", HTTP_ACCEPT_LANGUAGE="fr")
    # then
    assert too_large.status_code == 413
    assert too_large.json() == {"detail": "Le corps de la requête dépasse la limite de 10 octets."}
    assert null.json() == {"search": ["Les caractères nuls ne sont pas autorisés."]}
