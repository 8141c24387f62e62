import django.db.models.deletion
from django.db import migrations, models

# Until this migration every event added to the counters of every subset of its labels, so
# the counters of every label key are complete on every day: the keys that the scoped
# limits read are counted from now on with ``since`` empty (all days), and no counter row
# changes. Those of the other keys stay, unread: recording no longer adds to them, and a
# line that comes to need one fills its days from the events when it is saved.


def count_the_keys_in_use(apps, schema_editor):
    ScopedLimit = apps.get_model("accounts", "ScopedLimit")
    UsageCounterKey = apps.get_model("usage", "UsageCounterKey")
    keys = (
        ScopedLimit.objects.exclude(labels_key="")
        .exclude(period="minute")  # a minute line reads its events
        .values_list("account_id", "metric", "labels_key")
        .distinct()
        .order_by()
    )
    UsageCounterKey.objects.bulk_create(
        [
            UsageCounterKey(account_id=account_id, metric=metric, labels=labels, since=None)
            for account_id, metric, labels in sorted(set(keys))
        ],
        batch_size=1000,
    )


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0006_scoped_limits"),
        ("usage", "0011_ops_tables_for_ops"),
    ]

    operations = [
        migrations.CreateModel(
            name="UsageCounterKey",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "metric",
                    models.CharField(
                        choices=[
                            ("audio_transcribed_seconds", "Audio transcribed"),
                            ("audio_analyzed_seconds", "Audio analyzed"),
                            ("text_tokens", "Text tokens"),
                        ],
                        max_length=64,
                        verbose_name="metric",
                    ),
                ),
                ("labels", models.CharField(max_length=300, verbose_name="labels")),
                (
                    "since",
                    models.DateField(
                        blank=True,
                        help_text="The first local day its counters are complete from; "
                        "empty: every day.",
                        null=True,
                        verbose_name="since",
                    ),
                ),
                (
                    "account",
                    models.ForeignKey(
                        db_index=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="+",
                        to="accounts.account",
                        verbose_name="account",
                    ),
                ),
            ],
            options={
                "verbose_name": "counted label key",
                "verbose_name_plural": "counted label keys",
                "constraints": [
                    models.UniqueConstraint(
                        fields=("account", "metric", "labels"), name="usage_counter_key_once"
                    )
                ],
            },
        ),
        migrations.RunPython(count_the_keys_in_use, migrations.RunPython.noop),
    ]
