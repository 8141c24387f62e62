"""The bench's settings: the project's, served with the floors' URLs beside the real API.

Only the bench's gunicorn selects this module (``DJANGO_SETTINGS_MODULE=bench.settings``);
production and the tests never see the floors.
"""

from config.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
