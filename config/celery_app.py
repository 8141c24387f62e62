"""The Celery application; settings come from Django's, under the ``CELERY_`` namespace."""

import os

from celery import Celery
from celery.signals import before_task_publish, setup_logging, task_postrun, task_prerun

from . import request_ids

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("usage_limits")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# A task carries the request and correlation ids of the request that enqueued it.
before_task_publish.connect(request_ids.task_headers_add, weak=False)
task_prerun.connect(request_ids.task_ids_restore, weak=False)
task_postrun.connect(request_ids.task_ids_clear, weak=False)


@setup_logging.connect(weak=False)
def logging_from_django_settings(**kwargs: object) -> None:
    """Workers log as the web processes do (``LOGGING``: format, ids, ``LOG_LEVEL``)."""
    from logging.config import dictConfig

    from django.conf import settings

    dictConfig(settings.LOGGING)
