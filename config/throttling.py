"""API throttling per token, by scope, that never refuses a request because its cache is down.

Views name a scope (``throttle_scope = "ingest"``); its rate is
``REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"][scope]`` (``None``: not throttled). Counts
live in Django's default cache: process-local memory by default (each process counts on
its own), Redis in production (``CACHE_URL``) so that every process shares them.

A rate of N per second, minute, hour or day allows N requests in a window of that length
which opens at the bucket's first request (fixed windows): each request adds one to the
window's counter, and past N the requests are refused with 429 until the window closes,
which ``Retry-After`` tells. On Redis that is one round trip (a script that increments the
counter, gives a new one its expiry and returns both) instead of DRF's read and rewrite of
a pickled list of timestamps; a burst may reach 2N across the end of a window.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import Any

from django.core.cache import caches
from django.core.cache.backends.redis import RedisCache
from django.core.exceptions import ImproperlyConfigured
from redis.exceptions import NoScriptError
from rest_framework.settings import api_settings
from rest_framework.throttling import ScopedRateThrottle

logger = logging.getLogger(__name__)


class TokenRateThrottle(ScopedRateThrottle):
    """A bucket per API token and scope; a request the cache cannot count is let through.

    Two tokens of one user have separate buckets (services sharing a user still get their
    own rate). Requests without a token (the admin session on the browsable API) are
    counted per user, anonymous ones per client address.
    """

    cache_format = "throttle:%(scope)s:%(ident)s"

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
        # ``ScopedRateThrottle`` reads the view's scope and rate here, then counts.
        self.scope = getattr(view, self.scope_attr, None)
        if not self.scope:
            return True
        self.rate = self.get_rate()
        if self.rate is None:
            return True
        self.num_requests, self.duration = self.parse_rate(self.rate)
        try:
            count, self.remaining = self._count(self.get_cache_key(request, view))
        except Exception:
            # Any failure of the cache (server down, timeout): usage must never be lost to
            # a throttle, so the request goes on, and the outage shows in the logs.
            logger.warning(
                "throttle cache unavailable, request let through (scope %s)",
                self.scope,
                exc_info=True,
            )
            return True
        return count <= self.num_requests

    def _count(self, key: str) -> tuple[int, float]:
        """Add this request to the bucket's current window; its count, and the seconds
        until the window closes."""
        cache = caches["default"]  # at each request: settings may change (and do in tests)
        if isinstance(cache, RedisCache):
            redis_key = cache.make_and_validate_key(key)
            client = cache._cache.get_client(redis_key, write=True)
            count, left = _redis_count(client, redis_key, self.duration * 1000)
            return count, left / 1000
        # Another cache (process memory): the window's end is kept beside its count.
        now = self.timer()
        if cache.add(key, 1, self.duration):
            cache.set(f"{key}:until", now + self.duration, self.duration)
            return 1, self.duration
        try:
            count = cache.incr(key)
        except ValueError:  # the window closed in between: this request opens the next
            cache.delete(f"{key}:until")
            return self._count(key)
        return count, cache.get(f"{key}:until", now + self.duration) - now

    def wait(self) -> float:
        """Seconds until the window closes and the rate is available again (``Retry-After``)."""
        return max(1, math.ceil(self.remaining))


# Counts a request in its bucket, atomically: the counter's first request sets its expiry,
# the window's length in milliseconds (ARGV[1]); returns the count and the milliseconds
# left. Run by its digest (``EVALSHA``); sent whole once per Redis server that lacks it.
_COUNT_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {count, redis.call('PTTL', KEYS[1])}
"""
_COUNT_SCRIPT_SHA = hashlib.sha1(_COUNT_SCRIPT.encode()).hexdigest()


def _redis_count(client: Any, key: str, milliseconds: int) -> tuple[int, int]:
    try:
        count, left = client.evalsha(_COUNT_SCRIPT_SHA, 1, key, milliseconds)
    except NoScriptError:
        count, left = client.eval(_COUNT_SCRIPT, 1, key, milliseconds)
    return int(count), int(left)
