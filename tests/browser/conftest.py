"""Browser tests: Playwright for Python driving the system's Chromium against ``live_server``.

Chromium is Debian's (``apt-get install chromium``), found at ``CHROMIUM_PATH`` or
``/usr/bin/chromium``: Playwright never downloads a browser here. Without it these tests
skip with the reason, and fail instead under ``CI`` or ``REQUIRE_SERVICES=1``, so a CI
that lost its browser cannot pass by skipping them.

Playwright's sync API runs an asyncio event loop in the test's thread, and Django refuses
database calls from a thread with a running loop (``SynchronousOnlyOperation``). The
usual answer, given on Playwright's issue trackers, is ``DJANGO_ALLOW_ASYNC_UNSAFE``; it is
set only while Playwright runs, for the tests of this package, which call the ORM from
that thread between browser steps and never from a coroutine. The rest of the suite keeps
Django's guard. (Playwright in a thread of its own would keep the guard here too, but then
every browser step of a test would have to be handed to that thread.)

Every scenario runs in English and in French: the browser sends ``Accept-Language``,
which ``LocaleMiddleware`` follows, as it does for people. Each one saves screenshots
under ``artifacts/screenshots/`` (git-ignored), and every open page is saved there when a
test fails.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections
from django.test import Client
from playwright.sync_api import (
    APIRequestContext,
    Browser,
    BrowserContext,
    Page,
    Playwright,
    sync_playwright,
)

SCREENSHOTS = Path(settings.BASE_DIR) / "artifacts" / "screenshots"
# The two desktop sizes account managers use: a 15" laptop and a smaller one.
VIEWPORTS = {"1440": {"width": 1440, "height": 900}, "1280": {"width": 1280, "height": 800}}
LANGUAGES = ("en", "fr")
# A step that does not happen within this is a failure, not a hang.
TIMEOUT_MS = 15_000
_FAILED = pytest.StashKey[bool]()


def _name(request: pytest.FixtureRequest) -> str:
    """The test's name with its parameters, as a file name."""
    return re.sub(r"[^\w-]+", "-", request.node.name).strip("-")


def chromium_path() -> str:
    return os.environ.get("CHROMIUM_PATH") or "/usr/bin/chromium"


def _browser_required() -> bool:
    ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    return ci or os.environ.get("REQUIRE_SERVICES") == "1"


@pytest.fixture(scope="package")
def playwright(django_db_setup) -> Iterator[Playwright]:
    # The test database is made (and serialized for ``serialized_rollback``) first, in a
    # thread without an event loop.
    path = chromium_path()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        reason = f"needs Chromium at {path} (apt-get install chromium, or set CHROMIUM_PATH)"
        if _browser_required():
            pytest.fail(f"CI or REQUIRE_SERVICES=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    # While the loop runs, Django keeps this thread's connections apart (asgiref's
    # ``Local`` follows the running loop's context), so the new ones get the database's
    # serialized contents that ``serialized_rollback`` restores between tests.
    serialized = {
        alias: getattr(connections[alias], "_test_serialized_contents", None)
        for alias in connections
    }
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        driver = sync_playwright().start()
        for alias, contents in serialized.items():
            if contents is not None:
                connections[alias]._test_serialized_contents = contents
        try:
            yield driver
        finally:
            # Closed while the loop still runs, so that the test database can be dropped.
            connections.close_all()
            driver.stop()


@pytest.fixture(scope="package")
def browser(playwright: Playwright) -> Iterator[Browser]:
    chromium = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
    yield chromium
    chromium.close()


@pytest.fixture
def service_api(playwright: Playwright, live_server, service_user) -> Iterator[APIRequestContext]:
    """HTTP requests to the live server's API with a usage service's token, as a service
    sends them: ``service_api.post("/api/v1/usage/events/", data=json.dumps(...))``."""
    from knox.models import AuthToken

    _, key = AuthToken.objects.create(user=service_user, expiry=None)
    api = playwright.request.new_context(
        base_url=live_server.url,
        extra_http_headers={"Authorization": f"Token {key}", "Content-Type": "application/json"},
    )
    yield api
    api.dispose()


@pytest.fixture
def staff_manager(db):
    """An account manager as the admin lets them in: staff, in the managers' group."""
    from django.contrib.auth.models import Group

    from accounts.roles import ACCOUNT_MANAGERS
    from tests.factories import UserFactory

    user = UserFactory(username="manager", is_staff=True)
    user.groups.add(Group.objects.get(name=ACCOUNT_MANAGERS))
    return user


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    if report.when == "call":
        item.stash[_FAILED] = report.failed
    return report


@pytest.fixture(params=LANGUAGES)
def language(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def open_page(
    browser: Browser, live_server, language: str, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Page]]:
    """``open_page(user, viewport="1440")``: a page of a new browser, logged in as ``user``.

    The session cookie is made by Django's test client and has no expiry, so the browser
    keeps it whatever instant ``TEST_NOW`` moved the server's clock to.
    """
    contexts: list[BrowserContext] = []

    def open_(user, viewport: str = "1440") -> Page:
        context = browser.new_context(
            base_url=live_server.url, viewport=VIEWPORTS[viewport], locale=language
        )
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        if user is not None:
            client = Client()
            client.force_login(user)
            cookie = client.cookies[settings.SESSION_COOKIE_NAME]
            context.add_cookies(
                [{"name": cookie.key, "value": cookie.value, "url": live_server.url}]
            )
        return context.new_page()

    yield open_
    failed = request.node.stash.get(_FAILED, False)
    for context in contexts:
        if failed:  # what the page showed when the test failed, for whoever reads the report
            for index, page in enumerate(context.pages):
                SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOTS / f"{_name(request)}-failed-{index}.png"))
        context.close()


@pytest.fixture
def screenshot(request: pytest.FixtureRequest, language: str) -> Callable[..., Path]:
    """``screenshot(page, step)``: the whole page, saved as ``<test>-<step>.png``;
    ``full_page=False``: what the window shows (the size ``docs/images/`` keeps)."""

    def save(page: Page, step: str, *, full_page: bool = True) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{_name(request)}-{step}.png"
        page.screenshot(path=str(path), full_page=full_page)
        return path

    return save
