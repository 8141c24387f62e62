"""The notices e-mailed: a threshold reached (``templates/emails/threshold_reached.*``) and
capacity restored (``templates/emails/restored.*``), each a subject, text and HTML.

One function per e-mail; each message is rendered in its recipient's language.
"""

from __future__ import annotations

from anymail.message import AnymailMessage
from django.conf import settings
from django.template.loader import render_to_string
from django.utils.translation import gettext, override

from accounts.labels import labels_text
from accounts.metrics import METRICS
from accounts.models import Account
from accounts.windows import PeriodKind
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


def threshold_message(*, notification: Notification, delivery: Delivery) -> AnymailMessage:
    """The e-mail telling ``delivery.email`` that ``notification``'s threshold was reached
    (a restored notice: ``restored_message``)."""
    if notification.level == NoticeLevel.RESTORED:
        return restored_message(notification=notification, delivery=delivery)
    account = notification.account
    with override(delivery.language):
        context = threshold_context(notification=notification, account=account)
        subject = _single_line(render_to_string("emails/threshold_reached.subject.txt", context))
        text = render_to_string("emails/threshold_reached.txt", context)
        html = render_to_string("emails/threshold_reached.html", context)
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
    """The ``X-Usage-*`` headers of the line (SPEC 6 and 11.5)."""
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
    if notification.labels_key:
        headers[f"{HEADER_PREFIX}Labels"] = notification.labels_key
    return headers


def restored_message(*, notification: Notification, delivery: Delivery) -> AnymailMessage:
    """The e-mail telling ``delivery.email`` that a blocked line accepts usage again (SPEC
    12.2). Headers as a threshold's, ``X-Usage-Level: restored``: ``X-Usage-Period`` and
    ``X-Usage-Threshold`` are those of the blocked notification it answers, ``X-Usage-Used``
    the line's usage when restored."""
    account = notification.account
    with override(delivery.language):
        context = restored_context(notification=notification, account=account)
        subject = _single_line(render_to_string("emails/restored.subject.txt", context))
        text = render_to_string("emails/restored.txt", context)
        html = render_to_string("emails/restored.html", context)
    message = AnymailMessage(
        subject=subject,
        body=text,
        from_email=settings.DEFAULT_FROM_EMAIL,
        to=[delivery.email],
        headers=_headers(notification, account),
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
            "restores": str(notification.restores_id),
        },
    )
    message.attach_alternative(html, "text/html")
    return message
