import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("mcp", "0001_initial"),
        ("oauth", "0001_initial"),
    ]

    operations = [
        migrations.RemoveField(model_name="mcpconfiguration", name="oauth_provider"),
        migrations.AddField(
            model_name="mcpconfiguration",
            name="oauth_provider",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="oauth.oauthprovider",
            ),
        ),
    ]
