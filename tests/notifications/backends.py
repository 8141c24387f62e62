"""E-mail backends for tests: Anymail's test backend, made to fail on demand."""

from __future__ import annotations

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
