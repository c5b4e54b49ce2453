"""Models that are deliberately not tenant-scoped. Every other model must be a tenant model
(default manager TenantManager, row-level security forced): tests/tenants/test_isolation.py fails
for a model that is neither. Adding a name here is a security decision; say why beside it."""

GLOBAL_MODELS = {
    "tenants.User": "a person may belong to several organizations",
    "tenants.Organization": "the tenants themselves; operators manage them",
    "admin.LogEntry": "Django admin's change history, shown per user; operators only",
    "auth.Permission": "Django's static permission catalogue",
    "auth.Group": "Django's permission groups, managed by operators",
    "contenttypes.ContentType": "Django's static model catalogue",
    "sessions.Session": "signed-in browser sessions, keyed by an unguessable id",
    "django_celery_beat.PeriodicTask": "the platform's scheduled jobs, edited by operators in the admin",
    "django_celery_beat.PeriodicTasks": "django-celery-beat's change marker for its scheduler",
    "django_celery_beat.IntervalSchedule": "schedules of the platform's jobs",
    "django_celery_beat.CrontabSchedule": "schedules of the platform's jobs",
    "django_celery_beat.SolarSchedule": "schedules of the platform's jobs",
    "django_celery_beat.ClockedSchedule": "schedules of the platform's jobs",
    "social_django.UserSocialAuth": "a person's link to their company identity for the admin sign-in",
    "social_django.Nonce": "social-auth's replay protection, keyed by server and timestamp",
    "social_django.Association": "social-auth's OpenID associations (unused: OAuth 2 only)",
    "social_django.Code": "social-auth's e-mail validation codes (unused)",
    "social_django.Partial": "social-auth's interrupted pipelines, keyed by an unguessable token",
    "mcp.StdioTemplate": "command lines operators approve for every organization; tenants only pick one",
}
