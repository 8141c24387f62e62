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

A request whose token this process verified already has no round trip of its own for the
throttle: the token's authentication (``config.authentication``) counts it in the same
script as its reads (``bucket_ahead``, ``count_and_read``), and the throttle takes that
count. Such a request is counted once its token is known, before DRF's permission check:
a request the permissions then refuse is counted too, as every other request of its token.
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

    def _scoped(self, view: Any) -> bool:
        """Read the view's scope and rate (as ``ScopedRateThrottle`` does when it counts);
        whether the view is throttled."""
        self.scope = getattr(view, self.scope_attr, None)
        if not self.scope:
            return False
        self.rate = self.get_rate()
        if self.rate is None:
            return False
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return True

    def bucket_ahead(self, view: Any, digest: str) -> tuple[str, int] | None:
        """The bucket a request of the token with this digest counts in, for the
        authentication to count it in its own round trip: its cache key (unprefixed) and its
        window in milliseconds; ``None`` when the view is not throttled or the cache is not
        Redis. The count is handed back on the view (``throttle_counted``)."""
        if not self._scoped(view) or not isinstance(caches["default"], RedisCache):
            return None
        key = self.cache_format % {"scope": self.scope, "ident": f"token:{digest}"}
        return key, self.duration * 1000

    def allow_request(self, request: Any, view: Any) -> bool:
        if not self._scoped(view):
            return True
        key = self.get_cache_key(request, view)
        counted = getattr(view, "throttle_counted", None) or {}
        if key in counted:  # counted with the token's reads (``bucket_ahead``)
            count, left = counted.pop(key)
            self.remaining = left / 1000
            return count <= self.num_requests
        try:
            count, self.remaining = self._count(key)
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
            (count, left), _ = count_and_read(cache, (key, self.duration * 1000), [])
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


# Counts a request in its bucket (the last key), atomically: the counter's first request
# sets its expiry, the window's length in milliseconds (ARGV[1]). Reads the values of the
# other keys first (``MGET``), if any; returns those values (nil when missing), then the
# count and the milliseconds left. Run by its digest (``EVALSHA``); sent whole once per
# Redis server that lacks it.
_READ_AND_COUNT_SCRIPT = """
local bucket = KEYS[#KEYS]
local answer = {}
if #KEYS > 1 then answer = redis.call('MGET', unpack(KEYS, 1, #KEYS - 1)) end
local count = redis.call('INCR', bucket)
if count == 1 then redis.call('PEXPIRE', bucket, ARGV[1]) end
answer[#KEYS] = count
answer[#KEYS + 1] = redis.call('PTTL', bucket)
return answer
"""
_READ_AND_COUNT_SCRIPT_SHA = hashlib.sha1(_READ_AND_COUNT_SCRIPT.encode()).hexdigest()


def count_and_read(
    cache: RedisCache, bucket: tuple[str, int], keys: list[str]
) -> tuple[tuple[int, int], dict[str, Any]]:
    """Count a request in ``bucket`` (a cache key, unprefixed, and its window in
    milliseconds: ``TokenRateThrottle.bucket_ahead``) and read the default cache's ``keys``
    (none to count only), in one round trip: the bucket's count and milliseconds left,
    and each key's value (``None`` when missing)."""
    bucket_key, milliseconds = bucket
    made = [cache.make_and_validate_key(key) for key in (*keys, bucket_key)]
    client = cache._cache.get_client(made[-1], write=True)
    try:
        answer = client.evalsha(_READ_AND_COUNT_SCRIPT_SHA, len(made), *made, milliseconds)
    except NoScriptError:
        answer = client.eval(_READ_AND_COUNT_SCRIPT, len(made), *made, milliseconds)
    *values, count, left = answer
    loads = cache._cache._serializer.loads
    found = {
        key: None if value is None else loads(value)
        for key, value in zip(keys, values, strict=True)
    }
    return (int(count), int(left)), found
