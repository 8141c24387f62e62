"""The database settings read from the environment (README, "Settings")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def options(**environ: str) -> str:
    """The default database's ``OPTIONS`` as the settings module makes them from ``environ``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE")} | environ
    code = "import config.settings as s; print(s.DATABASES['default'].get('OPTIONS', {}))"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [(None, "{'prepare_threshold': 2}"), ("5", "{'prepare_threshold': 5}")]
    + [(off, "{'prepare_threshold': None}") for off in ("off", "OFF", "none")],
)
def test_postgresql_prepares_the_hot_statements_after_the_threshold_unless_off(threshold, expected):
    environ = {"DATABASE_URL": "postgres://postgres@127.0.0.1:5432/anything"}
    if threshold is not None:
        environ["DATABASE_PREPARE_THRESHOLD"] = threshold
    assert options(**environ) == expected


def test_sqlite_has_no_prepared_statements_to_set():
    assert options(DATABASE_PREPARE_THRESHOLD="5") == "{'timeout': 20}"


def test_a_threshold_that_is_no_number_stops_the_start_with_its_name():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE")}
    env |= {"DATABASE_URL": "postgres://h/db", "DATABASE_PREPARE_THRESHOLD": "often"}
    done = subprocess.run(
        [sys.executable, "-c", "import config.settings"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == (
        "django.core.exceptions.ImproperlyConfigured: DATABASE_PREPARE_THRESHOLD must be a"
        " whole number or off, not 'often'."
    )
