"""The notices e-mailed: a threshold reached (``templates/emails/threshold_reached.*``),
capacity restored (``templates/emails/restored.*``) and a forecast
(``templates/emails/forecast.*``, SPEC 12.3), each a subject, text and HTML.

One function per e-mail; each message is rendered in its recipient's language.
"""

from __future__ import annotations

from collections.abc import Callable

from anymail.message import AnymailMessage
from django.conf import settings
from django.template.loader import render_to_string
from django.utils.translation import gettext, override

from accounts.labels import labels_text
from accounts.metrics import METRICS
from accounts.models import Account
from accounts.windows import PeriodKind
from config.dates import datetime_text, day_text
from usage.models import MILLI
from usage.quantities import number_text, quantity_number, quantity_with_unit

from .models import Delivery, NoticeLevel, Notification, RestoredReason

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
    reached, or (``forecast``) a blocked threshold foreseen before the period ends (a
    restored notice: ``restored_message``)."""
    if notification.level == NoticeLevel.RESTORED:
        return restored_message(notification=notification, delivery=delivery)

    def context_of(*, notification: Notification, account: Account) -> dict[str, object]:
        context = threshold_context(notification=notification, account=account)
        if notification.level == NoticeLevel.FORECAST:
            context |= forecast_context(notification=notification, account=account)
        return context

    name = _TEMPLATES.get(notification.level, "threshold_reached")
    return _message(notification=notification, delivery=delivery, name=name, context_of=context_of)


def _change_text(notification: Notification) -> str:
    """What lifted the block, in the active language."""
    threshold = quantity_with_unit(
        (notification.restored_threshold or 0) * MILLI, notification.metric
    )
    reason = notification.restored_reason
    if reason == RestoredReason.RAISED:
        return gettext("The blocked threshold was raised to %(threshold)s.") % {
            "threshold": threshold
        }
    if reason == RestoredReason.EXTENDED:
        return gettext(
            "An extension was granted for the current period: the blocked threshold is now"
            " %(threshold)s."
        ) % {"threshold": threshold}
    if reason == RestoredReason.CLEARED:
        return gettext("The blocked threshold was removed: this limit line has no cap any more.")
    if reason == RestoredReason.REMOVED:
        return gettext("The limit line was removed.")
    return gettext("The period %(period)s has ended and a new period has started.") % {
        "period": notification.period_text()
    }


def restored_context(*, notification: Notification, account: Account) -> dict[str, object]:
    """What the restored notice says, in the active language: what changed, the blocked
    threshold now and what is left (``None``: no cap on the line any more)."""
    context = threshold_context(notification=notification, account=account)
    threshold = notification.restored_threshold
    remaining = notification.restored_remaining_milli
    context.update(
        {
            "change": _change_text(notification),
            "blocked_threshold": quantity_with_unit(
                notification.threshold * MILLI, notification.metric
            ),
            "new_threshold": None
            if threshold is None
            else quantity_with_unit(threshold * MILLI, notification.metric),
            "remaining": None
            if remaining is None
            else quantity_with_unit(remaining, notification.metric),
        }
    )
    return context


def _headers(notification: Notification, account: Account) -> dict[str, str]:
    """The ``X-Usage-*`` headers of the line (SPEC 6, 11.5 and 12.3)."""
    headers = {
        f"{HEADER_PREFIX}Account": str(account.pk),
        f"{HEADER_PREFIX}Account-External-Id": _single_line(account.external_id),
        f"{HEADER_PREFIX}Metric": notification.metric,
        f"{HEADER_PREFIX}Level": notification.level,
        f"{HEADER_PREFIX}Period": notification.period_code,
        f"{HEADER_PREFIX}Period-Kind": notification.period_kind,
        f"{HEADER_PREFIX}Threshold": str(notification.threshold),
        f"{HEADER_PREFIX}Used": str(quantity_number(notification.used_milli, notification.metric)),
    }
    if notification.projected_at is not None:
        projected = notification.projected_at.astimezone(account.zone)
        headers[f"{HEADER_PREFIX}Projected-At"] = projected.isoformat()
    if notification.labels_key:
        # Label values are plain characters (``accounts.labels``): nothing to fold.
        headers[f"{HEADER_PREFIX}Labels"] = notification.labels_key
    return headers


def _message(
    *,
    notification: Notification,
    delivery: Delivery,
    name: str,
    context_of: Callable[..., dict[str, object]],
) -> AnymailMessage:
    """The e-mail of ``templates/emails/<name>.*`` for one delivery, in its language."""
    account = notification.account
    with override(delivery.language):
        context = context_of(notification=notification, account=account)
        subject = _single_line(render_to_string(f"emails/{name}.subject.txt", context))
        text = render_to_string(f"emails/{name}.txt", context)
        html = render_to_string(f"emails/{name}.html", context)
    metadata = {
        "account": str(account.pk),
        "metric": notification.metric,
        "level": notification.level,
        "period": notification.period_code,
        "period_kind": notification.period_kind,
        "labels": notification.labels_key,
        "notification": str(notification.pk),
        "delivery": str(delivery.pk),
    }
    if notification.restores_id is not None:
        metadata["restores"] = str(notification.restores_id)
    message = AnymailMessage(
        subject=subject,
        body=text,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[delivery.email],
        headers=_headers(notification, account),
        # One tag: several providers (Postmark...) accept only one; metadata carries the rest.
        tags=[f"usage-{notification.level}"],
        metadata=metadata,
    )
    message.attach_alternative(html, "text/html")
    return message


def restored_message(*, notification: Notification, delivery: Delivery) -> AnymailMessage:
    """The e-mail telling ``delivery.email`` that a blocked line accepts usage again (SPEC
    12.2). Headers as a threshold's, ``X-Usage-Level: restored``: ``X-Usage-Period`` and
    ``X-Usage-Threshold`` are those of the blocked notification it answers, ``X-Usage-Used``
    the line's usage when restored."""
    return _message(
        notification=notification,
        delivery=delivery,
        name="restored",
        context_of=restored_context,
    )
