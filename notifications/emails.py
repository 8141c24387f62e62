"""The notice e-mails: subject, text and HTML from ``templates/emails/threshold_reached.*``
(a threshold reached) and ``templates/emails/forecast.*`` (a forecast, SPEC 12.3).

One function per e-mail; each message is rendered in its recipient's language.
"""

from __future__ import annotations

from anymail.message import AnymailMessage
from django.conf import settings
from django.template.loader import render_to_string
from django.utils.translation import override

from accounts.labels import labels_text
from accounts.metrics import METRICS
from accounts.models import Account
from accounts.windows import PeriodKind
from config.dates import datetime_text, day_text
from usage.models import MILLI
from usage.quantities import number_text, quantity_number, quantity_with_unit

from .models import Delivery, NoticeLevel, Notification

HEADER_PREFIX = "X-Usage-"


def _single_line(value: str) -> str:
    """Header-safe text: no line breaks, so nothing can be injected into the headers."""
    return " ".join(str(value).split())


def threshold_context(*, notification: Notification, account: Account) -> dict[str, object]:
    """What the threshold e-mail says, in the active language."""
    threshold_milli = notification.threshold * MILLI
    percent = (
        number_text(notification.used_milli * 100 // threshold_milli) if threshold_milli else None
    )
    labels = labels_text(notification.labels)
    period = notification.period_text()
    whole_month = notification.period_kind == PeriodKind.MONTH and not labels
    return {
        "account_name": account.name,
        "external_id": account.external_id,
        "metric_label": str(METRICS[notification.metric].label),
        "level": notification.level,
        "threshold": quantity_with_unit(threshold_milli, notification.metric),
        "used": quantity_with_unit(notification.used_milli, notification.metric),
        "percent": percent,
        "period": period,
        "line": notification.line_text(),
        "labels": labels,
        # The subject names the period and labels of any line but a whole-metric month's,
        # whose subject stays as it was before lines existed.
        "scope": "" if whole_month else ", ".join(part for part in (period, labels) if part),
        "is_test": notification.is_test,
    }


def forecast_context(*, notification: Notification, account: Account) -> dict[str, object]:
    """What the forecast e-mail adds: the projected instant in the account's time zone."""
    projected = notification.projected_at
    assert projected is not None
    return {
        "projected_day": day_text(projected.astimezone(account.zone).date()),
        "projected_at": datetime_text(projected, account.timezone),
    }


# The templates of each notice level, ``templates/emails/<name>.*``; a threshold reached
# (warning or blocked) is the default.
_TEMPLATES = {NoticeLevel.FORECAST.value: "forecast"}


def threshold_message(*, notification: Notification, delivery: Delivery) -> AnymailMessage:
    """The e-mail telling ``delivery.email`` what ``notification`` says: a threshold
    reached, or (``forecast``) a blocked threshold foreseen before the period ends."""
    account = notification.account
    name = _TEMPLATES.get(notification.level, "threshold_reached")
    with override(delivery.language):
        context = threshold_context(notification=notification, account=account)
        if notification.level == NoticeLevel.FORECAST:
            context |= forecast_context(notification=notification, account=account)
        subject = _single_line(render_to_string(f"emails/{name}.subject.txt", context))
        text = render_to_string(f"emails/{name}.txt", context)
        html = render_to_string(f"emails/{name}.html", context)
    used = quantity_number(notification.used_milli, notification.metric)
    headers = {
        f"{HEADER_PREFIX}Account": str(account.pk),
        f"{HEADER_PREFIX}Account-External-Id": _single_line(account.external_id),
        f"{HEADER_PREFIX}Metric": notification.metric,
        f"{HEADER_PREFIX}Level": notification.level,
        f"{HEADER_PREFIX}Period": notification.period_code,
        f"{HEADER_PREFIX}Period-Kind": notification.period_kind,
        f"{HEADER_PREFIX}Threshold": str(notification.threshold),
        f"{HEADER_PREFIX}Used": str(used),
    }
    if notification.projected_at is not None:
        projected = notification.projected_at.astimezone(account.zone)
        headers[f"{HEADER_PREFIX}Projected-At"] = projected.isoformat()
    if notification.labels_key:
        # Label values are plain characters (``accounts.labels``): nothing to fold.
        headers[f"{HEADER_PREFIX}Labels"] = notification.labels_key
    message = AnymailMessage(
        subject=subject,
        body=text,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[delivery.email],
        headers=headers,
        # One tag: several providers (Postmark...) accept only one; metadata carries the rest.
        tags=[f"usage-{notification.level}"],
        metadata={
            "account": str(account.pk),
            "metric": notification.metric,
            "level": notification.level,
            "period": notification.period_code,
            "period_kind": notification.period_kind,
            "labels": notification.labels_key,
            "notification": str(notification.pk),
            "delivery": str(delivery.pk),
        },
    )
    message.attach_alternative(html, "text/html")
    return message
