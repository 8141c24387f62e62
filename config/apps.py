from django.apps import AppConfig


class ProjectConfig(AppConfig):
    """The project package: connects what every process needs at start-up, web or worker."""

    name = "config"

    def ready(self) -> None:
        from config.authentication import invalidation_connect

        # A revocation made anywhere (admin, command, shell, worker) reaches the token cache.
        invalidation_connect()
