"""API throttling per token, by scope, that never refuses a request because its cache is down.

Views name a scope (``throttle_scope = "ingest"``); its rate is
``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"][scope]`` (``None``: not throttled). Counts
live in Django's default cache: process-local memory by default (each process counts on
its own), Redis in production (``CACHE_URL``) so that every process shares them.
"""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle

logger = logging.getLogger(__name__)


class TokenRateThrottle(ScopedRateThrottle):
    """A bucket per API token and scope; a request the cache cannot count is let through.

    Two tokens of one user have separate buckets (services sharing a user still get their
    own rate). Requests without a token (the admin session on the browsable API) are
    counted per user, anonymous ones per client address.
    """

    def get_rate(self) -> str | None:
        # Read at every request, not at import: settings may change (and do in tests).
        rates = api_settings.DEFAULT_THROTTLE_RATES
        if self.scope not in rates:
            raise ImproperlyConfigured(f"No throttle rate set for scope {self.scope!r}.")
        return rates[self.scope]

    def get_cache_key(self, request: Any, view: Any) -> str:
        digest = getattr(request.auth, "digest", None)
        if digest:
            ident = f"token:{digest}"
        elif request.user and request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"address:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}

    def allow_request(self, request: Any, view: Any) -> bool:
        try:
            return super().allow_request(request, view)
        except ImproperlyConfigured:
            raise
        except Exception:
            # Any failure of the cache (server down, timeout): usage must never be lost to
            # a throttle, so the request goes on, and the outage shows in the logs.
            logger.warning(
                "throttle cache unavailable, request let through (scope %s)",
                self.scope,
                exc_info=True,
            )
            return True
