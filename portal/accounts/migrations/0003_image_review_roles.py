"""Sign-off is per image: reviewers may add an image review (no longer a per-model one); all roles view them."""

from django.db import migrations

from portal.accounts.roles import sync_roles


def sync(apps, schema_editor):
    sync_roles(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_cell_roles"),
        ("analyses", "0006_image_review"),
    ]

    operations = [migrations.RunPython(sync, migrations.RunPython.noop)]
