import gc
import os

from django.core.wsgi import get_wsgi_application
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
application = get_wsgi_application()

# What the process holds from here on (modules, the URLconf and the views it imports,
# settings) lives as long as the process: moved out of the garbage collector's sight, a
# full collection no longer walks it. A batch of 1000 events allocates enough objects to
# set off one full collection every dozen batches or so, and walking the ~120,000 objects
# of a loaded process was a quarter of its CPU time (docs/performance.md, "Batch
# ingestion"). Each gunicorn worker imports this module, so each freezes its own objects.
get_resolver().url_patterns  # noqa: B018 - imports the views now rather than at the first request
gc.collect()
gc.freeze()
