"""Receivers of Anymail's signals; each only hands the event to a service."""

from __future__ import annotations

from typing import Any

from anymail.signals import AnymailTrackingEvent

from .services import delivery_track


def delivery_tracked(
    sender: Any, event: AnymailTrackingEvent, esp_name: str, **kwargs: Any
) -> None:
    """Anymail's tracking webhook received ``event`` (connected in ``NotificationsConfig``)."""
    delivery_track(
        esp_message_id=str(event.message_id or ""),
        event_type=event.event_type,
        description=event.description or event.mta_response or "",
    )
