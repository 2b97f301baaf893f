"""Grant the roles the cell permissions (view cells, reclassify a cell), once the cell models exist."""

from django.db import migrations

from portal.accounts.roles import sync_roles


def sync(apps, schema_editor):
    sync_roles(apps)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_roles"),
        ("analyses", "0004_cells"),
    ]

    operations = [migrations.RunPython(sync, migrations.RunPython.noop)]
