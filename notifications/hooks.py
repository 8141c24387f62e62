"""Outgoing webhooks (SPEC 12.4): each notification POSTed, signed, to the account's endpoints.

Not to be confused with ``notifications.webhooks``, which serves Anymail's *incoming*
tracking webhook: this module is the other direction, the back-office calling the
account's own systems. It holds the rules of an endpoint (``webhook_endpoint_problems``,
used by the API and the admin alike), the services that save endpoints and record, send,
recover and resend their deliveries, and the one function that turns a notification into
the JSON posted (``webhook_payload``).

Requests are signed with the ``standardwebhooks`` library (``webhook-id``,
``webhook-timestamp``, ``webhook-signature``). A delivery's ``webhook-id`` is drawn when
it is recorded and sent on every attempt, so that a receiver can deduplicate. The address
is checked when an endpoint is saved and again before every attempt, after resolving its
host: only public addresses are called (``WEBHOOKS_ALLOW_LOOPBACK`` admits loopback for
local runs and tests), the request goes to the address that was checked (a second lookup
could answer otherwise), redirects are never followed and every request has a timeout.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import math
import secrets
import socket
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import urllib3
from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from standardwebhooks.webhooks import Webhook

from accounts.models import Account
from usage.quantities import quantity_number

from .models import NoticeLevel, Notification, WebhookDelivery, WebhookEndpoint

logger = logging.getLogger(__name__)

# Every level a notification may have (SPEC 12.2, 12.3): an endpoint may ask for any.
LEVELS = tuple(NoticeLevel.values)
MAX_ENDPOINTS = 10
MAX_URL_LENGTH = 2000  # WebhookEndpoint.url
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
LOOPBACK_NAMES = ("127.0.0.1", "localhost")
USER_AGENT = "usage-limits-webhooks/1"

MSG_TOO_MANY = _("At most %(count)d webhook endpoints per account.")
MSG_LISTED_TWICE = _("This URL is listed twice.")


# --- Addresses ---------------------------------------------------------------------------


class AddressRefused(Exception):
    """A webhook URL that may not be called. ``transient``: its host did not resolve (which
    may change), as opposed to an address that is not allowed at all."""

    def __init__(self, message: Any, *, transient: bool = False) -> None:
        super().__init__(str(message))
        self.message = message
        self.transient = transient


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (``addresses``, all allowed) and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def _resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, in the resolver's order (raises ``OSError``)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def address_is_allowed(address: str, *, allow_loopback: bool) -> bool:
    """Whether ``address`` may be called: public (global unicast) only, loopback as well when
    ``allow_loopback``. Private, link-local, shared, reserved and multicast ones never."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:10.0.0.1 reaches 10.0.0.1
    if allow_loopback and ip.is_loopback:
        return True
    return ip.is_global and not ip.is_multicast


def _refuse_scheme(allow_loopback: bool) -> AddressRefused:
    if allow_loopback:
        return AddressRefused(
            _(
                "Only https:// URLs are accepted (and, for local runs, http://127.0.0.1:PORT "
                "and http://localhost:PORT)."
            )
        )
    return AddressRefused(_("Only https:// URLs are accepted."))


def webhook_target(url: str) -> Target:
    """``url`` checked now, its host resolved: raises ``AddressRefused`` unless every address
    it resolves to may be called (``address_is_allowed``)."""
    allow_loopback = settings.WEBHOOKS_ALLOW_LOOPBACK
    try:
        URLValidator(schemes=["http", "https"])(url)
        parts = urlsplit(url)
        port = parts.port
    except (ValidationError, ValueError):
        raise AddressRefused(_("Enter a valid URL.")) from None
    host = parts.hostname or ""
    if parts.scheme == "http":
        if not (allow_loopback and host in LOOPBACK_NAMES and port):
            raise _refuse_scheme(allow_loopback)
    elif parts.scheme != "https":
        raise _refuse_scheme(allow_loopback)
    if parts.username is not None or parts.password is not None:
        raise AddressRefused(_("The URL may not carry a user name or password."))
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = _resolve(host, port)
    except (OSError, UnicodeError):
        addresses = []
    if not addresses:
        raise AddressRefused(
            _("The host name %(host)s does not resolve.") % {"host": host}, transient=True
        )
    for address in addresses:
        if not address_is_allowed(address, allow_loopback=allow_loopback):
            raise AddressRefused(
                _(
                    "%(host)s resolves to %(address)s, which is not a public address: only "
                    "public addresses are accepted."
                )
                % {"host": host, "address": address}
            )
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(parts.scheme, host, port, path, tuple(addresses))


# --- Endpoints ---------------------------------------------------------------------------


def webhook_secret_new() -> str:
    """A new signing secret, as the Standard Webhooks specification writes them."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def webhook_endpoint_problems(*, url: str, levels: Iterable[str]) -> dict[str, list[str]]:
    """What is wrong with one endpoint, by field (empty: nothing). Resolves the URL's host."""
    problems: dict[str, list[str]] = {}
    try:
        webhook_target(url)
    except AddressRefused as refused:
        problems["url"] = [str(refused.message)]
    levels = list(levels)
    if not levels:
        problems["levels"] = [str(_("Choose at least one level."))]
    elif any(level not in LEVELS for level in levels):
        problems["levels"] = [
            str(_("Expected levels among: %(choices)s.") % {"choices": ", ".join(LEVELS)})
        ]
    elif len(set(levels)) != len(levels):
        problems["levels"] = [str(_("A level is listed twice."))]
    return problems


@dataclass(frozen=True)
class EndpointInput:
    url: str
    levels: list[str]
    is_active: bool = True


@dataclass(frozen=True)
class SavedEndpoint:
    """An endpoint as saved; ``secret`` only when it was just created (shown once)."""

    endpoint: WebhookEndpoint
    secret: str | None


class WebhookEndpointsInvalid(Exception):
    """The list breaks a rule: messages by endpoint index and field, or about the whole list."""

    def __init__(
        self, *, errors: dict[int, dict[str, list[str]]], whole: list[str] | None = None
    ) -> None:
        super().__init__(errors, whole)
        self.errors = errors
        self.whole = whole or []


MSG_UNKNOWN_FIELD = _("Unknown field.")
FIELDS = ("url", "levels", "is_active")


def webhook_endpoints_parse(data: object) -> list[EndpointInput]:
    """The endpoints of a JSON list (the API's ``PUT`` body), their types checked; raises
    ``WebhookEndpointsInvalid``. The rules are ``webhook_endpoints_replace``'s."""
    if not isinstance(data, list):
        raise WebhookEndpointsInvalid(errors={}, whole=[str(_("Expected a list of endpoints."))])
    if len(data) > MAX_ENDPOINTS:
        raise WebhookEndpointsInvalid(
            errors={}, whole=[str(MSG_TOO_MANY % {"count": MAX_ENDPOINTS})]
        )
    errors: dict[int, dict[str, list[str]]] = {}
    parsed = []
    for index, item in enumerate(data):
        if not isinstance(item, dict):
            errors[index] = {
                "non_field_errors": [
                    str(_("Expected an object with “url”, “levels” and “is_active”."))
                ]
            }
            continue
        problems = {str(key): [str(MSG_UNKNOWN_FIELD)] for key in item if key not in FIELDS}
        url, levels, is_active = item.get("url"), item.get("levels"), item.get("is_active", True)
        if not isinstance(url, str):
            problems["url"] = [str(_("Expected the URL as a string."))]
        elif len(url) > MAX_URL_LENGTH:
            problems["url"] = [str(_("At most %(count)d characters.") % {"count": MAX_URL_LENGTH})]
        if not isinstance(levels, list) or not all(isinstance(v, str) for v in levels):
            problems["levels"] = [str(_("Expected a list of levels."))]
        if not isinstance(is_active, bool):
            problems["is_active"] = [str(_("Expected true or false."))]
        if problems:
            errors[index] = problems
        else:
            parsed.append(EndpointInput(url=url, levels=levels, is_active=is_active))
    if errors:
        raise WebhookEndpointsInvalid(errors=errors)
    return parsed


def webhook_endpoints_replace(*, account: Account, data: object) -> list[SavedEndpoint]:
    """Make the endpoints of ``data`` (a JSON list) the account's list, in that order; refuses
    the whole list on any rule (``WebhookEndpointsInvalid``), changing nothing.

    An endpoint whose URL is already listed keeps its id and secret; a new URL is a new
    endpoint with a new secret; endpoints left out are removed (their deliveries stay).
    """
    endpoints = webhook_endpoints_parse(data)
    errors: dict[int, dict[str, list[str]]] = {}
    seen: set[str] = set()
    for index, given in enumerate(endpoints):
        problems = webhook_endpoint_problems(url=given.url, levels=given.levels)
        if given.url in seen:
            problems.setdefault("url", []).append(str(MSG_LISTED_TWICE))
        seen.add(given.url)
        if problems:
            errors[index] = problems
    if errors:
        raise WebhookEndpointsInvalid(errors=errors)
    with transaction.atomic():
        # Concurrent lists for one account are written one after the other.
        Account.objects.select_for_update().filter(pk=account.pk).first()
        existing = {e.url: e for e in WebhookEndpoint.objects.filter(account=account)}
        WebhookEndpoint.objects.filter(account=account).exclude(url__in=list(seen)).delete()
        saved = []
        for given in endpoints:
            endpoint = existing.get(given.url)
            secret = None
            if endpoint is None:
                secret = webhook_secret_new()
                endpoint = WebhookEndpoint.objects.create(
                    account=account,
                    url=given.url,
                    levels=list(given.levels),
                    is_active=given.is_active,
                    secret=secret,
                )
            elif endpoint.levels != list(given.levels) or endpoint.is_active != given.is_active:
                endpoint.levels = list(given.levels)
                endpoint.is_active = given.is_active
                endpoint.save(update_fields=["levels", "is_active", "updated_at"])
            saved.append(SavedEndpoint(endpoint, secret))
    return saved


def webhook_endpoint_validate(
    *, account: Account, url: str, levels: Iterable[str], endpoint: WebhookEndpoint | None = None
) -> None:
    """The rules of one endpoint saved on its own (the admin): raises ``ValidationError``
    by field, the same rules as ``webhook_endpoints_replace``."""
    problems = webhook_endpoint_problems(url=url, levels=levels)
    others = WebhookEndpoint.objects.filter(account=account)
    if endpoint is not None and endpoint.pk is not None:
        others = others.exclude(pk=endpoint.pk)
    if others.filter(url=url).exists():
        problems.setdefault("url", []).append(
            str(_("This account already has an endpoint with this URL."))
        )
    if (endpoint is None or endpoint.pk is None) and others.count() >= MAX_ENDPOINTS:
        problems.setdefault("__all__", []).append(str(MSG_TOO_MANY % {"count": MAX_ENDPOINTS}))
    if problems:
        raise ValidationError(problems)


def webhook_endpoint_save(
    *,
    account: Account,
    url: str,
    levels: list[str],
    is_active: bool,
    endpoint: WebhookEndpoint | None = None,
) -> SavedEndpoint:
    """Create or change one endpoint (the admin). A new endpoint, or a new URL, gets a new
    secret, returned to be shown once; otherwise the secret is kept."""
    webhook_endpoint_validate(account=account, url=url, levels=levels, endpoint=endpoint)
    with transaction.atomic():
        secret = None
        if endpoint is None or endpoint.pk is None:
            endpoint = endpoint or WebhookEndpoint()
            endpoint.account = account
            secret = webhook_secret_new()
        elif endpoint.url != url:
            secret = webhook_secret_new()
        if secret is not None:
            endpoint.secret = secret
        endpoint.url, endpoint.levels, endpoint.is_active = url, list(levels), is_active
        endpoint.save()
    return SavedEndpoint(endpoint, secret)


# --- What is posted ----------------------------------------------------------------------


def webhook_payload(notification: Notification) -> dict[str, Any]:
    """The JSON posted for ``notification`` (SPEC 12.4); every field comes from the ledger row:
    its line (``period_kind``, ``labels``), ``period`` as ``X-Usage-Period`` writes it
    (``YYYY-MM`` for a month, else the period's start instant)."""
    account = notification.account
    data: dict[str, Any] = {
        "notification_id": notification.pk,
        "account": {
            "id": str(account.pk),
            "external_id": account.external_id,
            "name": account.name,
        },
        "metric": notification.metric,
        "level": notification.level,
        "period_kind": notification.period_kind,
        "period": notification.period_code,
        "labels": notification.labels,
        "threshold": notification.threshold,
        "used": quantity_number(notification.used_milli, notification.metric),
    }
    if notification.level == NoticeLevel.FORECAST:
        projected_at = notification.projected_at
        data["projected_at"] = projected_at.isoformat() if projected_at else None
    if notification.level == NoticeLevel.RESTORED:
        # What the notice answers and what is left (``None``: no cap on the line any more).
        data["restores"] = notification.restores_id
        data["blocked_threshold"] = notification.restored_threshold
        data["remaining"] = quantity_number(
            notification.restored_remaining_milli, notification.metric
        )
    return {
        "type": f"usage.{notification.level}",
        "timestamp": notification.created_at.isoformat(),
        "data": data,
    }


def _json_number(value: object) -> object:
    if isinstance(value, Decimal):
        return float(value)  # as the API writes seconds: a number with up to 3 decimals
    raise TypeError(f"{type(value).__name__} is not JSON")


def webhook_body(notification: Notification) -> bytes:
    """``webhook_payload`` as the bytes posted and signed (the same on every attempt)."""
    return json.dumps(
        webhook_payload(notification),
        default=_json_number,
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()


def webhook_headers(*, secret: str, webhook_id: str, body: bytes, now: datetime) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt, signed with the endpoint's secret."""
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": webhook_id,
        "webhook-timestamp": str(math.floor(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, now, body),
    }


def _post(target: Target, body: bytes, headers: dict[str, str]) -> int:
    """POST ``body`` to the checked address of ``target``; the HTTP status. Redirects are
    answers, never followed; raises ``urllib3.exceptions.HTTPError`` on network errors."""
    seconds = settings.WEBHOOKS_TIMEOUT
    options: dict[str, Any] = {
        "timeout": urllib3.Timeout(connect=seconds, read=seconds),
        "retries": False,
        "maxsize": 1,
    }
    pool: urllib3.HTTPConnectionPool
    if target.scheme == "https":
        # Connected to the checked address, the certificate still checked against the name.
        pool = urllib3.HTTPSConnectionPool(
            target.addresses[0],
            target.port,
            server_hostname=target.host,
            assert_hostname=target.host,
            cert_reqs="CERT_REQUIRED",
            **options,
        )
    else:
        pool = urllib3.HTTPConnectionPool(target.addresses[0], target.port, **options)
    with pool:
        response = pool.urlopen(
            "POST",
            target.path,
            body=body,
            headers={**headers, "Host": target.host_header},
            redirect=False,
            retries=False,
            preload_content=False,
        )
        status = response.status
        response.release_conn()
    return status


# --- Deliveries --------------------------------------------------------------------------


def webhook_deliveries_create(*, notification_ids: Iterable[int]) -> int:
    """Record one delivery per active endpoint whose levels include the notification's
    level; returns how many. Call in the transaction that records the notifications.

    Test notifications go to no endpoint. The unique constraint keeps it at one per
    endpoint and notification, whoever calls twice.
    """
    rows = list(
        Notification.objects.filter(pk__in=list(notification_ids), is_test=False).values_list(
            "pk", "account_id", "level"
        )
    )
    if not rows:
        return 0
    endpoints: dict[uuid.UUID, list[WebhookEndpoint]] = {}
    for endpoint in WebhookEndpoint.objects.filter(
        account_id__in={account_id for _pk, account_id, _level in rows}, is_active=True
    ).order_by("created_at", "pk"):
        endpoints.setdefault(endpoint.account_id, []).append(endpoint)
    deliveries = [
        WebhookDelivery(
            notification_id=pk,
            endpoint=endpoint,
            url=endpoint.url,
            webhook_id=f"msg_{uuid.uuid4().hex}",
        )
        for pk, account_id, level in rows
        for endpoint in endpoints.get(account_id, [])
        if level in endpoint.levels
    ]
    return len(WebhookDelivery.objects.bulk_create(deliveries, ignore_conflicts=True))


def _describe(error: Exception) -> str:
    try:
        return str(error) or type(error).__name__
    except Exception:
        return type(error).__name__


def _attempt(delivery: WebhookDelivery, notification: Notification) -> tuple[int | None, str, bool]:
    """Call the endpoint once: ``(HTTP status, error, transient)``; no error when accepted."""
    endpoint = delivery.endpoint
    if endpoint is None:
        return None, "The endpoint was removed.", False
    if not endpoint.is_active:
        return None, "The endpoint is inactive.", False
    try:
        target = webhook_target(endpoint.url)
    except AddressRefused as refused:
        return None, f"Not sent: {refused.message}", refused.transient
    body = webhook_body(notification)
    headers = webhook_headers(
        secret=endpoint.secret, webhook_id=delivery.webhook_id, body=body, now=timezone.now()
    )
    try:
        status = _post(target, body, headers)
    except (urllib3.exceptions.HTTPError, OSError) as error:
        return None, _describe(error)[:2000], True
    if 200 <= status < 300:
        return status, "", False
    if status == 429 or status >= 500:
        return status, f"The endpoint answered HTTP {status}.", True
    if 300 <= status < 400:
        return status, f"The endpoint answered HTTP {status}, a redirect: not followed.", False
    return status, f"The endpoint answered HTTP {status}.", False


def webhook_deliveries_send(*, notification: Notification, final_attempt: bool) -> list[str]:
    """Send each queued webhook delivery of ``notification`` once: the outcome of each sent
    (``"sent"``, ``"failed"``, ``"retry"``). Network errors, 429 and 5xx are retried (failed
    on the final attempt); other answers fail at once, visible in the admin.

    Each delivery is claimed with a conditional update (queued -> sending) that draws a
    token; only the claim's owner records the outcome. The request is bounded by
    ``WEBHOOKS_TIMEOUT``, far below ``NOTIFICATIONS_STUCK_AFTER``: no lease to renew.
    """
    outcomes = []
    queued = notification.webhook_deliveries.filter(status=WebhookDelivery.Status.QUEUED)
    for delivery in queued.select_related("endpoint"):
        token = uuid.uuid4()
        now = timezone.now()
        claimed = WebhookDelivery.objects.filter(
            pk=delivery.pk, status=WebhookDelivery.Status.QUEUED
        ).update(
            status=WebhookDelivery.Status.SENDING,
            lease_token=token,
            claimed_at=now,
            attempts=F("attempts") + 1,
            updated_at=now,
        )
        if claimed != 1:
            continue  # another worker has it
        http_status, error, transient = _attempt(delivery, notification)
        now = timezone.now()
        changes: dict[str, Any] = {"http_status": http_status, "updated_at": now}
        if not error:
            outcome = "sent"
            changes.update(status=WebhookDelivery.Status.SENT, sent_at=now, last_error="")
        else:
            outcome = "retry" if transient and not final_attempt else "failed"
            status = (
                WebhookDelivery.Status.QUEUED
                if outcome == "retry"
                else WebhookDelivery.Status.FAILED
            )
            changes.update(status=status, last_error=error)
            logger.warning("webhook delivery %s to %s: %s", delivery.pk, delivery.url, error)
        if WebhookDelivery.objects.filter(
            pk=delivery.pk, status=WebhookDelivery.Status.SENDING, lease_token=token
        ).update(**changes):
            outcomes.append(outcome)
    return outcomes


def webhook_deliveries_recover(*, now: datetime) -> set[int]:
    """Queue again what dead workers left "sending" (failed after the last attempt), and
    return the notifications whose queued webhook deliveries lost their task."""
    stuck = WebhookDelivery.objects.filter(
        status=WebhookDelivery.Status.SENDING,
        claimed_at__lt=now - timedelta(seconds=settings.NOTIFICATIONS_STUCK_AFTER),
    )
    most = settings.NOTIFICATIONS_MAX_ATTEMPTS
    recovered: set[int] = set()
    for pk, notification_id, attempt in stuck.values_list("pk", "notification_id", "attempts"):
        unknown = "its worker stopped before recording whether the endpoint accepted it"
        if attempt >= most:
            status, last_error = (
                WebhookDelivery.Status.FAILED,
                f"Gave up after {attempt} attempts: {unknown}.",
            )
        else:
            status = WebhookDelivery.Status.QUEUED
            last_error = f"Queued again after attempt {attempt} of {most}: {unknown}."
        changed = stuck.filter(pk=pk).update(status=status, last_error=last_error, updated_at=now)
        if changed and status == WebhookDelivery.Status.QUEUED:
            recovered.add(notification_id)
    lost_after = timedelta(seconds=settings.NOTIFICATIONS_LOST_AFTER)
    retry_window = timedelta(seconds=settings.NOTIFICATIONS_MAX_RETRY_DELAY) + lost_after
    lost = WebhookDelivery.objects.filter(status=WebhookDelivery.Status.QUEUED).filter(
        Q(updated_at__lt=now - lost_after, attempts=0)
        | Q(updated_at__lt=now - retry_window)
        | Q(notification__published_at__isnull=True)
    )
    return recovered | set(lost.values_list("notification_id", flat=True).distinct())


def webhook_deliveries_resend(*, delivery_ids: Iterable[int]) -> int:
    """Queue failed webhook deliveries again (same ``webhook-id``) and enqueue their
    notifications; returns how many."""
    from .services import notifications_enqueue

    with transaction.atomic():
        chosen = WebhookDelivery.objects.select_for_update().filter(
            pk__in=list(delivery_ids), status=WebhookDelivery.Status.FAILED
        )
        notification_ids = sorted(set(chosen.values_list("notification_id", flat=True)))
        count = chosen.update(status=WebhookDelivery.Status.QUEUED, updated_at=timezone.now())
        if count:
            transaction.on_commit(lambda: notifications_enqueue(notification_ids))
    return count
