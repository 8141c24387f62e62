"""The production Celery settings hold together (SPEC section 6, issue notes on Celery)."""

from __future__ import annotations

from django.conf import settings

from config.celery_app import app
from notifications.tasks import retry_delay


def test_a_task_survives_its_worker_and_workers_take_one_task_at_a_time():
    assert app.conf.task_acks_late is True
    assert app.conf.task_reject_on_worker_lost is True
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_ignore_result is True


def test_redis_redelivers_only_after_the_longest_retry_delay():
    visibility = app.conf.broker_transport_options["visibility_timeout"]
    longest = max(retry_delay(n) for n in range(settings.NOTIFICATIONS_MAX_ATTEMPTS))
    assert longest <= settings.NOTIFICATIONS_MAX_RETRY_DELAY
    assert visibility > longest


def test_a_dead_broker_cannot_hang_a_web_request():
    options = app.conf.broker_transport_options
    assert 0 < options["socket_timeout"] <= 5
    assert 0 < options["socket_connect_timeout"] <= 5
    assert 0 < app.conf.broker_connection_timeout <= 5
    assert app.conf.task_publish_retry is False


def test_retries_back_off_exponentially_up_to_the_cap(settings):
    settings.NOTIFICATIONS_RETRY_BASE_DELAY = 30
    settings.NOTIFICATIONS_MAX_RETRY_DELAY = 3600
    assert [retry_delay(n) for n in range(9)] == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]


def test_beat_sweeps_notifications_every_minute_and_reconciles_counters():
    schedule = app.conf.beat_schedule
    sweep = schedule["sweep-notifications"]
    assert sweep["task"] == "notifications.tasks.sweep_notifications"
    assert sweep["schedule"] <= 60
    assert sweep["options"]["expires"] < sweep["schedule"]
    tasks = {entry["task"] for entry in schedule.values()}
    assert "usage.tasks.reconcile_recent_counters" in tasks
    app.loader.import_default_modules()  # what a worker does at start: autodiscovery
    for entry in schedule.values():
        assert entry["task"] in app.tasks


def test_a_dead_workers_delivery_is_sent_again_within_twice_the_stuck_delay():
    # Its lease expires at most one stuck delay after its worker died; the next sweep
    # enqueues it again, so the sweep must run at least once per stuck delay.
    sweep = app.conf.beat_schedule["sweep-notifications"]
    assert sweep["schedule"] <= settings.NOTIFICATIONS_STUCK_AFTER
