"""Settings, read from the environment through django-environ.

With no environment at all the project runs on the embedded default: SQLite in
``db.sqlite3``, Celery tasks run eagerly in-process and mail goes to the console.
Every variable is documented in ``.env.example`` and the README.
"""

from __future__ import annotations

from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(BASE_DIR / ".env")

DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str(
    "SECRET_KEY", default="django-insecure-embedded-default-do-not-use-in-production"
)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "simple_history",
    "anymail",
    "accounts",
    "usage",
    "notifications",
    "backoffice",
    # Connects the token cache's invalidation in every process (config/authentication.py).
    "config.apps.ProjectConfig",
]

MIDDLEWARE = [
    # First, so that every log line of the request carries its ids (config/request_ids.py).
    "config.request_ids.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    # Before anything reads the body or queries with the request's text; after the locale,
    # so that its refusals speak the request's language (config/request_limits.py).
    "config.request_limits.RequestLimitsMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CONN_MAX_AGE", default=60))
# A health check costs a query at the start of every request; on by choice only.
DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("CONN_HEALTH_CHECKS", default=False)
if DATABASES["default"]["ENGINE"].startswith("django.db.backends.postgresql"):
    # The hot paths' statements (``config.db.bound_cursor``) are prepared on a connection
    # once run this many times there; "off" never (a pooler older than PgBouncer 1.21).
    _prepare = env.str("DATABASE_PREPARE_THRESHOLD", default="2").strip().lower()
    if _prepare not in ("off", "none", "") and not _prepare.isdigit():
        raise ImproperlyConfigured(
            f"DATABASE_PREPARE_THRESHOLD must be a whole number or off, not {_prepare!r}."
        )
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault(
        "prepare_threshold", int(_prepare) if _prepare.isdigit() else None
    )
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded default serves one developer; a busy timeout avoids "database is locked"
    # when the dev server and a command write at the same time.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("timeout", 20)
    DATABASES["default"]["CONN_MAX_AGE"] = 0
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en"
LANGUAGES = [("en", _("English")), ("fr", _("French"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": env.str(
            "STATICFILES_STORAGE",
            default="django.contrib.staticfiles.storage.StaticFilesStorage",
        )
    },
}

# --- Security (production turns these on through the environment; see .env.example) ---
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=False)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=False)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)

# --- Request limits (config/request_limits.py, config/parsers.py) ---
# The largest body read, in bytes; larger answers 413. The contract's largest request, 1000
# events each with 8 KiB of metadata, is about 8.3 MB: the default leaves room for
# pretty-printed JSON. Django's own cap on a body read into memory follows it.
REQUEST_BODY_MAX_BYTES = env.int("REQUEST_BODY_MAX_BYTES", default=12 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = REQUEST_BODY_MAX_BYTES

# The most distinct label sets an account may send per metric and local day; an event that
# would add one more refuses its batch (``usage.services.usage_events_record``).
USAGE_MAX_LABEL_SETS = env.int("USAGE_MAX_LABEL_SETS", default=100)

# --- REST framework ---
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "config.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["config.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": [
        # DRF's JSONRenderer, the same bytes, written by orjson (config/renderers.py).
        "config.renderers.FastJSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PAGINATION_CLASS": "config.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "accounts.api.base.exception_handler",
    "COERCE_DECIMAL_TO_STRING": False,
}

# --- API throttling and the cache that counts ---
# Ingestion and pre-flight checks are throttled per token (config/throttling.py): 429 with
# Retry-After past the rate; an empty rate turns a scope's throttle off. Counts live in the
# default cache: process-local memory by default (every process counts on its own, so a
# rate holds per process), Redis in production (CACHE_URL=redis://...) for one shared count.
# A cache that is down lets requests through (logged): usage is never lost to a throttle.
REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"] = ["config.throttling.TokenRateThrottle"]
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = {
    "ingest": env.str("API_THROTTLE_INGEST", default="6000/min") or None,
    "check": env.str("API_THROTTLE_CHECK", default="6000/min") or None,
}
CACHES = {"default": env.cache_url("CACHE_URL", default="locmemcache://")}
if CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
    # A Redis that stops answering costs a request one second at most, not a hang.
    CACHES["default"].setdefault("OPTIONS", {})
    CACHES["default"]["OPTIONS"].setdefault("socket_connect_timeout", 1)
    CACHES["default"]["OPTIONS"].setdefault("socket_timeout", 1)

# Tokens are stored hashed (knox); service tokens do not expire until revoked in the admin.
REST_KNOX = {"TOKEN_TTL": None, "AUTO_REFRESH": False}
# Seconds a process remembers a verified token (its user, permissions and account binding)
# instead of reading them again; 0: never. Only with a shared cache (CACHE_URL=redis://...),
# through which every revocation reaches every process at once (config/authentication.py).
TOKEN_CACHE_SECONDS = env.int("TOKEN_CACHE_SECONDS", default=60)
# Seconds a process remembers an account's lines (capacities, the pre-flight, the usage
# read) while no change to them is announced; 0: never. Only with Redis as the shared
# cache (accounts/generations.py): each change committed reaches every process at once.
LINES_MEMORY_SECONDS = env.int("LINES_MEMORY_SECONDS", default=60)

SPECTACULAR_SETTINGS = {
    "TITLE": "Usage limits API",
    "DESCRIPTION": (
        "Limits, usage and pre-flight checks for Enterprise accounts. "
        "Authenticate with `Authorization: Token <key>`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        # Every request body is required (accounts/api/base.py).
        "accounts.api.base.openapi_request_bodies_required",
        # Request bodies refuse unknown properties (config/schema_fields.py).
        "config.schema_fields.forbid_unknown_request_fields",
        # The request limits every operation shares: 400, 405, 411, 413 (config/schema.py).
        "config.schema.postprocess_request_limits",
    ],
    # The metrics of each unit are an enum of their own (events and checks of that unit).
    "ENUM_NAME_OVERRIDES": {
        "MetricEnum": "usage.api.serializers.METRIC_CHOICES",
        "SecondsMetricEnum": "usage.api.serializers.SECONDS_METRICS",
        "TokensMetricEnum": "usage.api.serializers.TOKENS_METRICS",
        "PeriodEnum": "accounts.windows.PeriodKind.values",
        "StatusEnum": "usage.api.serializers.STATUS_CHOICES",
        "ReservationStatusEnum": "usage.api.serializers.RESERVATION_STATUS_CHOICES",
        "ReservationRefusalCodeEnum": "usage.api.serializers.RESERVATION_REFUSAL_CODES",
    },
    # Swagger UI served from our own static files, not a CDN: the docs work offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# --- Celery ---
# Production: a Redis broker, late acknowledgement with a prefetch of one (a task is
# redelivered if its worker dies), results ignored, one beat process. Publishing is
# bounded by short socket timeouts and never retried, so a dead Redis cannot hang a web
# request: what was not enqueued is picked up by the periodic sweep.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="")
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=not CELERY_BROKER_URL)
# In-process (eager) tasks log their errors instead of failing the request that ran them.
CELERY_TASK_EAGER_PROPAGATES = False
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
CELERY_TIMEZONE = "UTC"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_PUBLISH_RETRY = False
CELERY_BROKER_CONNECTION_TIMEOUT = 2
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Delivery retries: base, 2 x base, 4 x base... up to the maximum delay, then failed.
NOTIFICATIONS_RETRY_BASE_DELAY = env.float("NOTIFICATIONS_RETRY_BASE_DELAY", default=30.0)
NOTIFICATIONS_MAX_RETRY_DELAY = env.float("NOTIFICATIONS_MAX_RETRY_DELAY", default=3600.0)
NOTIFICATIONS_MAX_ATTEMPTS = env.int("NOTIFICATIONS_MAX_ATTEMPTS", default=8)
# A delivery still queued this long after its notification was recorded lost its task
# (broker down, worker killed): the sweep enqueues it again.
NOTIFICATIONS_LOST_AFTER = env.float("NOTIFICATIONS_LOST_AFTER", default=120.0)
# For this long after a period ends, the sweep also looks for crossings of that period
# reached before its end and never recorded (late events count but never notify).
NOTIFICATIONS_CLOSED_PERIOD_GRACE = env.float("NOTIFICATIONS_CLOSED_PERIOD_GRACE", default=3600.0)
# A delivery is sent under a lease that its worker renews every third of this delay; a
# lease not renewed for this long belongs to a dead worker, and the sweep sends it again.
NOTIFICATIONS_STUCK_AFTER = env.float("NOTIFICATIONS_STUCK_AFTER", default=600.0)
# Outgoing webhooks (notifications/hooks.py): loopback targets (http://127.0.0.1:PORT,
# http://localhost:PORT) only for local runs and tests; connect and read timeouts, seconds.
WEBHOOKS_ALLOW_LOOPBACK = env.bool("WEBHOOKS_ALLOW_LOOPBACK", default=False)
WEBHOOKS_TIMEOUT = env.float("WEBHOOKS_TIMEOUT", default=10.0)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Redis redelivers an unacknowledged task after this long: it must exceed the longest
    # countdown of a retry, or a waiting retry would be delivered twice.
    "visibility_timeout": int(NOTIFICATIONS_MAX_RETRY_DELAY * 2),
    "socket_timeout": 2,
    "socket_connect_timeout": 2,
}
CELERY_BEAT_SCHEDULE: dict = {
    "sweep-notifications": {
        "task": "notifications.tasks.sweep_notifications",
        "schedule": 60.0,
        "options": {"expires": 55},
    },
    # Sets right the counters of the last days that differ from their events (logged as errors).
    "reconcile-recent-counters": {
        "task": "usage.tasks.reconcile_recent_counters",
        "schedule": 15 * 60,
        # A run that waited past the next one's start is dropped rather than piled up.
        "options": {"expires": 14 * 60},
    },
    # Writes "expired" on reservations past their expiry; reads never wait for it.
    "expire-reservations": {
        "task": "usage.tasks.expire_reservations",
        "schedule": 5 * 60,
        "options": {"expires": 4 * 60},
    },
}

# --- Mail ---
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
EMAIL_FILE_PATH = env.str("EMAIL_FILE_PATH", default=str(BASE_DIR / "var" / "mail"))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Usage limits <usage-limits@localhost>")
SERVER_EMAIL = DEFAULT_FROM_EMAIL
# Anymail: every ANYMAIL_<NAME> variable becomes ANYMAIL["<NAME>"], e.g.
# ANYMAIL_MAILGUN_API_KEY or ANYMAIL_WEBHOOK_SECRET (the tracking webhook's basic-auth secret).
ANYMAIL = {
    name.removeprefix("ANYMAIL_"): value
    for name, value in env.ENVIRON.items()
    if name.startswith("ANYMAIL_") and value
}

# --- Logging ---
# Every line shows the request and correlation ids of the request (or task) it belongs
# to, "-" outside one; Celery workers use this configuration too (config/celery_app.py).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_ids": {"()": "config.request_ids.RequestIdLogFilter"}},
    "formatters": {
        "plain": {
            "format": "%(asctime)s %(levelname)s %(name)s "
            "[request_id=%(request_id)s correlation_id=%(correlation_id)s] %(message)s"
        }
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["request_ids"],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
