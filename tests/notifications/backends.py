"""E-mail backends for tests: Anymail's test backend, made to fail, wait or race on demand."""

from __future__ import annotations

import time

import requests
from anymail.backends.test import EmailBackend as AnymailTestBackend
from anymail.exceptions import AnymailRequestsAPIError


class FlakyBackend(AnymailTestBackend):
    """Fails the first ``FAILURES`` sends with HTTP ``STATUS``, then sends."""

    FAILURES = 2
    STATUS = 503
    calls = 0

    def send_messages(self, email_messages):
        type(self).calls += 1
        if type(self).calls <= self.FAILURES:
            response = requests.Response()
            response.status_code = self.STATUS
            response.reason = "provider unavailable"
            response._content = b'{"message": "provider unavailable"}'
            raise AnymailRequestsAPIError(
                "provider unavailable", email_message=email_messages[0], response=response
            )
        return super().send_messages(email_messages)


class TrackedBeforeReturningBackend(AnymailTestBackend):
    """The provider accepts each message, then ``ON_ACCEPTED(message_id)`` runs before
    ``send()`` returns: the provider's tracking webhook racing the worker's "sent" update."""

    ON_ACCEPTED = None

    def send_messages(self, email_messages):
        sent = super().send_messages(email_messages)
        hook = type(self).ON_ACCEPTED
        if hook is not None:
            for message in email_messages:
                hook(str(message.anymail_status.message_id))
        return sent


class SlowBackend(AnymailTestBackend):
    """A provider that takes ``DELAY`` seconds to accept a message."""

    DELAY = 2.5

    def send_messages(self, email_messages):
        time.sleep(self.DELAY)
        return super().send_messages(email_messages)
