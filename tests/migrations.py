"""Moving the test database to given migrations, for the tests of a data migration."""

from __future__ import annotations

from django.apps.registry import Apps
from django.db import connection
from django.db.migrations.executor import MigrationExecutor


def migrate(targets: list[tuple[str, str]]) -> Apps:
    """Migrate the database to ``targets``; the models as they were there.

    A test that moves back must end with ``call_command("migrate")``, so that the tests
    after it find the latest schema.
    """
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps
