"""Settings shared by every profile, read from the environment.

Every value has an embedded default so that `make run` needs nothing installed: SQLite in var/,
the local-memory cache and a filesystem broker for Celery. Production (production.py) removes the
defaults that must never reach a real deployment. Helpers fail loudly on a malformed value.
"""

import base64
import ipaddress
import secrets
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent.parent
env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False) if (BASE_DIR / ".env").exists() else None

VAR_DIR = Path(env.str("AGENTAPI_VAR_DIR", default=str(BASE_DIR / "var")))


def _embedded_secret(name: str, make) -> str:
    """A secret kept in var/ for the embedded profile, made on first use and reused after."""
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    path = VAR_DIR / name
    if not path.exists():
        path.write_text(make())
        path.chmod(0o600)
    return path.read_text().strip()


def parse_networks(values: list[str]) -> list:
    try:
        return [ipaddress.ip_network(value.strip(), strict=False) for value in values if value.strip()]
    except ValueError as exc:
        raise ImproperlyConfigured(f"OUTBOUND_ALLOWED_NETWORKS: {exc}") from None


DEBUG = env.bool("DEBUG", default=False)
SECRET_KEY = env.str("SECRET_KEY", default="") or _embedded_secret("secret_key", lambda: secrets.token_urlsafe(50))
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# Versioned AES-256-GCM keys, newest first: "v2:<base64 32 bytes>,v1:<base64 32 bytes>".
FIELD_ENCRYPTION_KEYS = env.list("FIELD_ENCRYPTION_KEYS", default=[]) or [
    _embedded_secret("field_encryption_key", lambda: "v1:" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
]
OUTBOUND_ALLOWED_NETWORKS = parse_networks(env.list("OUTBOUND_ALLOWED_NETWORKS", default=[]))
OUTBOUND_TIMEOUT = env.float("OUTBOUND_TIMEOUT", default=10.0)  # seconds, OAuth providers and discovery

INSTALLED_APPS = [
    "console.apps.ConsoleAdminConfig",  # django.contrib.admin, its index the operators' dashboard
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_celery_beat",
    "social_django",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_prometheus",
    "agentapi",
    "tenants",
    "audit",
    "oauth",
    "mcp",
    "sessions_app",
]

# django-ratelimit (the admin's sign-in limit) knows django-redis's cache by name only; the cache
# above is django-redis's with django-prometheus's counters.
SILENCED_SYSTEM_CHECKS = ["django_ratelimit.W001"]

# django-prometheus's request metrics (django_http_*) cover what Django serves, the management
# plane; agentapi.metrics' own (agentapi_http_*) cover both planes with the route as the label.
MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "agentapi.middleware.RequestContextMiddleware",
    "agentapi.middleware.APIGuardMiddleware",
    "agentapi.middleware.RateLimitHeadersMiddleware",
    "agentapi.metrics.MetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    # A refused company sign-in ends on the login page (SOCIAL_AUTH_LOGIN_ERROR_URL), never a 500.
    "social_django.middleware.SocialAuthExceptionMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "audit.middleware.SecurityEventMiddleware",
    "tenants.middleware.SessionOrganizationMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "agentapi.urls"
# Threads per web process that run synchronous request work (each holds a database connection).
# Few is faster for CPU-bound requests: at 12, GIL contention cost ~2 ms of CPU per list request.
WEB_THREADS = env.int("WEB_THREADS", default=4)
WSGI_APPLICATION = "agentapi.wsgi.application"
ASGI_APPLICATION = "agentapi.asgi.application"
AUTH_USER_MODEL = "tenants.User"
LOGIN_URL = "admin:login"

# Admin sign-in with a company identity (social-auth-app-django). A provider is offered only when
# its keys are set; a sign-in maps to an existing operator or organization staff member by verified
# e-mail (tenants/social.py) and never creates a user or grants anything.
_SOCIAL = [
    # (backend, button label, settings that must all be set)
    ("social_core.backends.github.GithubOAuth2", "GitHub", ["SOCIAL_AUTH_GITHUB_KEY", "SOCIAL_AUTH_GITHUB_SECRET"]),
    (
        "social_core.backends.google.GoogleOAuth2",
        "Google",
        ["SOCIAL_AUTH_GOOGLE_OAUTH2_KEY", "SOCIAL_AUTH_GOOGLE_OAUTH2_SECRET"],
    ),
    (
        "social_core.backends.azuread_tenant.AzureADTenantOAuth2",
        "Microsoft",
        [
            "SOCIAL_AUTH_AZUREAD_TENANT_OAUTH2_KEY",
            "SOCIAL_AUTH_AZUREAD_TENANT_OAUTH2_SECRET",
            "SOCIAL_AUTH_AZUREAD_TENANT_OAUTH2_TENANT_ID",
        ],
    ),
    (
        "social_core.backends.auth0.Auth0OAuth2",
        "Auth0",
        ["SOCIAL_AUTH_AUTH0_DOMAIN", "SOCIAL_AUTH_AUTH0_KEY", "SOCIAL_AUTH_AUTH0_SECRET"],
    ),
]
SOCIAL_LOGIN_BACKENDS = []
for _backend, _label, _names in _SOCIAL:
    _values = {name: env.str(name, default="") for name in _names}
    globals().update(_values)
    if all(_values.values()):
        SOCIAL_LOGIN_BACKENDS.append((_backend, _label))
AUTHENTICATION_BACKENDS = [backend for backend, _ in SOCIAL_LOGIN_BACKENDS] + [
    "django.contrib.auth.backends.ModelBackend"
]
SOCIAL_AUTH_GITHUB_SCOPE = ["user:email"]  # the addresses with their verified flags
SOCIAL_AUTH_AUTH0_SCOPE = ["openid", "profile", "email"]
SOCIAL_AUTH_JSONFIELD_ENABLED = True
SOCIAL_AUTH_LOGIN_REDIRECT_URL = "/admin/"
SOCIAL_AUTH_LOGIN_ERROR_URL = "/admin/login/?social=refused"
SOCIAL_AUTH_RAISE_EXCEPTIONS = False
SOCIAL_AUTH_PIPELINE = (
    "social_core.pipeline.social_auth.social_details",
    "social_core.pipeline.social_auth.social_uid",
    "social_core.pipeline.social_auth.auth_allowed",
    "tenants.social.verified_email",
    "social_core.pipeline.social_auth.social_user",
    "tenants.social.existing_staff_user",
    "social_core.pipeline.social_auth.associate_user",
)

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "tenants.social.login_providers",
            ],
        },
    },
]


def _database(url: str) -> dict:
    config = env.db_url_config(url)
    if config["ENGINE"] == "django.db.backends.postgresql":
        # Our backend keeps PostgreSQL's row-level security settings in step with the tenant scope.
        config["ENGINE"] = "agentapi.db.backends.postgresql"
        # Server-side binding lets psycopg prepare a statement after a few executions, so the
        # planner (not cheap with row-level security policies and joins) runs once per connection.
        # Turn it off behind a transaction-mode pooler that cannot keep prepared statements.
        server_side = env.bool("DATABASE_SERVER_SIDE_BINDING", default=True)
        config.setdefault("OPTIONS", {})["server_side_binding"] = server_side
        config["OPTIONS"]["prepare_threshold"] = 2 if server_side else None
        if env.bool("DATABASE_POOL", default=False):
            # A psycopg pool per process, for deployments that run more threads than they want
            # connections. The web process's worker threads (WEB_THREADS) each keep a persistent
            # connection by default instead, which costs nothing per request.
            config["CONN_MAX_AGE"] = 0
            config.setdefault("OPTIONS", {})["pool"] = {
                "min_size": env.int("DATABASE_POOL_MIN_SIZE", default=2),
                "max_size": env.int("DATABASE_POOL_MAX_SIZE", default=10),
                "timeout": env.float("DATABASE_POOL_TIMEOUT", default=10.0),
            }
        else:
            config["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
            # A health check is one round trip when a request first uses its thread's kept
            # connection. Without it, after PostgreSQL restarts or fails over, every web thread's
            # connection fails one request (503) before it is replaced: the fault suite saw the
            # platform take up to 7 s to answer everything again instead of under 2.
            config["CONN_HEALTH_CHECKS"] = env.bool("DATABASE_CONN_HEALTH_CHECKS", default=True)
    elif config["ENGINE"] == "django.db.backends.sqlite3":
        # The embedded profile has several writers (web threads, the Celery worker and beat). A
        # deferred SQLite transaction that reads and then writes (a key's first use, an audited
        # change) fails at once with "database is locked" when another writer got in between;
        # taking the write lock at BEGIN makes it wait its turn (up to `timeout` seconds) instead.
        # WAL lets reads outside a transaction go on meanwhile.
        config.setdefault("OPTIONS", {}).update(
            transaction_mode="IMMEDIATE", timeout=20, init_command="PRAGMA journal_mode=WAL;"
        )
    config["ATOMIC_REQUESTS"] = True
    return config


DATABASES = {"default": _database(env.str("DATABASE_URL", default="") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if env.str("DATABASE_OWNER_URL", default=""):
    # The tables' owner: migrations and the few privileged paths (audit purge) use it.
    DATABASES["owner"] = {**_database(env.str("DATABASE_OWNER_URL")), "ATOMIC_REQUESTS": False}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {
        "default": {
            # django-redis (the design card's), through django-prometheus's subclass of it, which
            # counts gets, hits and misses (django_cache_get_total, _hits_total, _misses_total).
            "BACKEND": "django_prometheus.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "agentapi",
            "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 1, "SOCKET_TIMEOUT": 1},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

SESSION_ENGINE = "django.contrib.sessions.backends.db"

# Celery: Redis in production; an embedded filesystem broker otherwise (worker and beat share var/).
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    _broker_dir = VAR_DIR / "celery-broker"
    (_broker_dir / "processed").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir),
        "data_folder_out": str(_broker_dir),
        "processed_folder": str(_broker_dir / "processed"),
        "store_processed": False,
    }
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery's Django fixup closes every database connection before and after each task unless this is
# set: each agent run paid a new PostgreSQL connection (a profile of the worker: two thirds of a
# run's own CPU) and PostgreSQL a new backend process. Set, connections are kept as the web
# processes keep theirs (CONN_MAX_AGE) and checked before each task (agentapi.celery).
CELERY_DB_REUSE_MAX = 1_000_000
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
# Beat reads its schedule from the database (django-celery-beat), so operators edit it in the
# admin ("Periodic tasks"); the entries below are written there when beat starts.
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_BEAT_SCHEDULE = {
    "purge-audit-events": {"task": "audit.tasks.audit_events_purge_expired", "schedule": 24 * 3600.0},
    "check-mcp-servers": {"task": "mcp.tasks.mcp_configurations_check_health", "schedule": None},
    "refresh-oauth-tokens": {"task": "oauth.tasks.oauth_tokens_refresh_expiring", "schedule": 60.0},
    "expire-agent-sessions": {"task": "sessions_app.tasks.agent_sessions_expire", "schedule": 60.0},
    "purge-idempotency-records": {"task": "tenants.tasks.idempotency_records_purge", "schedule": 3600.0},
    "reap-agent-runs": {"task": "sessions_app.tasks.agent_runs_reap", "schedule": 15.0},
    # The audit log's sequencer; a run the worker could not start within a few seconds is dropped
    # (the next one chains what it would have).
    "chain-audit-events": {
        "task": "audit.tasks.audit_chain_extend",
        "schedule": 1.0,
        "options": {"expires": 5.0},
    },
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(VAR_DIR / "static")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True  # embedded and tests: no collectstatic needed

# Request bodies: nested deeper than this is a 400 (agentapi.parsers); larger than
# DATA_UPLOAD_MAX_MEMORY_SIZE bytes a 413.
JSON_MAX_DEPTH = env.int("JSON_MAX_DEPTH", default=64)
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("DATA_UPLOAD_MAX_MEMORY_SIZE", default=2_621_440)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tenants.authentication.APIKeyAuthentication",
        "tenants.authentication.JWTAuthentication",
        "tenants.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["agentapi.parsers.StrictJSONParser"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "agentapi.errors.exception_handler",
    "DEFAULT_PAGINATION_CLASS": "agentapi.pagination.CursorPagination",
    "PAGE_SIZE": 50,
    "UNAUTHENTICATED_USER": None,
    "URL_FORMAT_OVERRIDE": None,
    "DEFAULT_THROTTLE_CLASSES": ["tenants.ratelimits.RateLimitThrottle"],
}

# Rate limits (agentapi.ratelimit): per class of endpoint, per credential (API key, or user) and per
# organization, each COUNT/PERIOD (second, minute, hour, day); an organization's setting
# `rate_limits` overrides them class by class. A POST to a route named here is of its class; other
# requests are `read` (GET, HEAD, OPTIONS) or `write`.
RATE_LIMITS = {
    "read": {"credential": "1200/minute", "organization": "12000/minute"},
    "write": {"credential": "300/minute", "organization": "3000/minute"},
    "mcp": {"credential": "1200/minute", "organization": "12000/minute"},
    "agent": {"credential": "60/minute", "organization": "600/minute"},
    "auth": {"credential": "30/minute", "address": "60/minute"},
}
# Failed authentications (a refused API key, token or JWT) per client address; past this the
# address is refused (429) whatever it presents, until its failures age out.
RATE_LIMIT_AUTH_FAILURES = env.str("RATE_LIMIT_AUTH_FAILURES", default="30/minute")
RATE_LIMIT_ROUTE_CLASSES = {
    "mcp-proxy-tools-call": "mcp", "mcp-proxy-resources-read": "mcp", "mcp-proxy-prompts-get": "mcp",
    "agent-session-tools-tools-call": "mcp", "agent-session-tools-resources-read": "mcp",
    "agent-session-tools-prompts-get": "mcp", "agent-session-conversation-messages": "agent",
    "oauth-authorize": "auth",
}  # fmt: skip
# Redis unreachable: `local` (each process limits alone, at each limit divided by
# RATE_LIMIT_EXPECTED_PROCESSES), `open` or `closed` (503); `auth` is never open.
RATE_LIMIT_FAIL_MODE = env.str("RATE_LIMIT_FAIL_MODE", default="local")
if RATE_LIMIT_FAIL_MODE not in ("local", "open", "closed"):
    raise ImproperlyConfigured("RATE_LIMIT_FAIL_MODE is local, open or closed.")
RATE_LIMIT_EXPECTED_PROCESSES = env.int("RATE_LIMIT_EXPECTED_PROCESSES", default=2)

SPECTACULAR_SETTINGS = {
    "TITLE": "AgentAPI",
    "DESCRIPTION": "Multi-tenant control plane for AI agents and the MCP servers they use.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "APPEND_COMPONENTS": {
        "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "description": "API key or JWT"}}
    },
    "SECURITY": [{"bearerAuth": []}],
    "AUTHENTICATION_WHITELIST": [],
    "ENUM_NAME_OVERRIDES": {
        "MCPConfigurationStatusEnum": "mcp.models.Status",
        "ToolPinStatusEnum": "mcp.models.PinStatus",
        "APIKeyStatusEnum": [("active", "active"), ("expired", "expired"), ("revoked", "revoked")],
        "AgentKindEnum": "sessions_app.models.AgentKind",
        "MessageRoleEnum": "sessions_app.models.MessageRole",
        "MemberRoleEnum": "tenants.models.Role",
        "OAuthProviderKindEnum": "oauth.models.Kind",
    },
}

# JWTs from an identity provider: verified against its JWKS.
JWT_JWKS_URL = env.str("JWT_JWKS_URL", default="")
JWT_ISSUER = env.str("JWT_ISSUER", default="")
JWT_AUDIENCE = env.str("JWT_AUDIENCE", default="")
JWT_ALGORITHMS = env.list("JWT_ALGORITHMS", default=["RS256", "ES256"])
JWT_ORGANIZATION_CLAIM = env.str("JWT_ORGANIZATION_CLAIM", default="org")
JWT_USER_CLAIM = env.str("JWT_USER_CLAIM", default="email")
JWT_JWKS_CACHE_SECONDS = env.int("JWT_JWKS_CACHE_SECONDS", default=3600)
JWT_JWKS_REFETCH_COOLDOWN_SECONDS = env.int("JWT_JWKS_REFETCH_COOLDOWN_SECONDS", default=60)
JWT_LEEWAY_SECONDS = env.int("JWT_LEEWAY_SECONDS", default=30)

# Failed admin password sign-ins a minute, per address and per account, before refusing more.
ADMIN_SIGNIN_FAILURES_PER_MINUTE = env.int("ADMIN_SIGNIN_FAILURES_PER_MINUTE", default=5)

# API keys: last use is written at most this often per key, never on every request.
API_KEY_LAST_USED_INTERVAL_SECONDS = env.int("API_KEY_LAST_USED_INTERVAL_SECONDS", default=300)
# Audit events older than this many days are purged by the scheduled job (0 keeps them forever).
AUDIT_RETENTION_DAYS = env.int("AUDIT_RETENTION_DAYS", default=0)
# Seconds between runs of the sequencer that chains written audit events (audit.sequencer).
AUDIT_SEQUENCER_INTERVAL = env.float("AUDIT_SEQUENCER_INTERVAL", default=1.0)
CELERY_BEAT_SCHEDULE["chain-audit-events"]["schedule"] = AUDIT_SEQUENCER_INTERVAL

# OAuth connections.
OAUTH_REDIRECT_URI = env.str(
    "OAUTH_REDIRECT_URI", default=""
)  # the registered callback; built from the request when empty
OAUTH_STATE_TTL_SECONDS = env.int("OAUTH_STATE_TTL_SECONDS", default=600)
OAUTH_REFRESH_WINDOW_SECONDS = env.int("OAUTH_REFRESH_WINDOW_SECONDS", default=300)
OAUTH_REFRESH_ATTEMPTS = env.int("OAUTH_REFRESH_ATTEMPTS", default=3)
OAUTH_TOKEN_CACHE_SECONDS = env.float("OAUTH_TOKEN_CACHE_SECONDS", default=15.0)  # a process's copy of a connection

# How long a create request's Idempotency-Key is remembered (tenants.idempotency).
IDEMPOTENCY_KEY_TTL_SECONDS = env.int("IDEMPOTENCY_KEY_TTL_SECONDS", default=24 * 3600)

# Unwrapped organization data keys are kept in memory this long (a destroyed key stops working
# everywhere within this time).
DATA_KEY_CACHE_SECONDS = env.int("DATA_KEY_CACHE_SECONDS", default=60)

# MCP servers: the per-process pool of upstream sessions and the guards around every call.
MCP_CALL_TIMEOUT = env.float("MCP_CALL_TIMEOUT", default=30.0)  # seconds, per call
MCP_CONNECT_TIMEOUT = env.float("MCP_CONNECT_TIMEOUT", default=10.0)  # connect and handshake
MCP_MAX_CONCURRENT_CALLS = env.int("MCP_MAX_CONCURRENT_CALLS", default=4)  # per configuration and process
MCP_QUEUE_TIMEOUT = env.float("MCP_QUEUE_TIMEOUT", default=2.0)  # wait for a free slot, then 503 busy
MCP_READ_ATTEMPTS = env.int("MCP_READ_ATTEMPTS", default=3)  # listing, reading and getting retry
MCP_BREAKER_FAIL_MAX = env.int("MCP_BREAKER_FAIL_MAX", default=5)
MCP_BREAKER_RESET_TIMEOUT = env.float("MCP_BREAKER_RESET_TIMEOUT", default=30.0)
MCP_BREAKER_SYNC_INTERVAL = env.float("MCP_BREAKER_SYNC_INTERVAL", default=1.0)  # local copy of a closed breaker
MCP_POOL_IDLE_SECONDS = env.float("MCP_POOL_IDLE_SECONDS", default=300.0)
MCP_STDIO_MAX_PROCESSES_PER_ORGANIZATION = env.int("MCP_STDIO_MAX_PROCESSES_PER_ORGANIZATION", default=4)
MCP_STDIO_ROOT = env.str("MCP_STDIO_ROOT", default="")  # where stdio servers get their working directories
MCP_CATALOGUE_TTL = env.int("MCP_CATALOGUE_TTL", default=300)  # seconds a tool catalogue stays cached
MCP_HEALTH_CHECK_INTERVAL = env.float("MCP_HEALTH_CHECK_INTERVAL", default=300.0)
# The data plane (agentapi.dataplane): the routes served natively async on the event loop (method,
# path pattern, handler, metrics label); off, or on SQLite, their DRF views serve them instead.
DATA_PLANE_ENABLED = env.bool("DATA_PLANE_ENABLED", default=True)
_CONFIGURATION = r"^/api/v1/mcp/configurations/(?P<pk>[0-9]+)"
_SESSION = (
    r"^/api/v1/sessions/(?P<session_id>[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12})"
)
DATA_PLANE_ROUTES = [
    ("POST", _CONFIGURATION + r"/tools/call/$", "mcp.dataplane.tool_call", "mcp/configurations/<pk>/tools/call/"),
    (
        "POST",
        _CONFIGURATION + r"/resources/read/$",
        "mcp.dataplane.resource_read",
        "mcp/configurations/<pk>/resources/read/",
    ),
    ("POST", _CONFIGURATION + r"/prompts/get/$", "mcp.dataplane.prompt_get", "mcp/configurations/<pk>/prompts/get/"),
    ("POST", _SESSION + r"/tools/call/$", "sessions_app.dataplane.tool_call", "sessions/<id>/tools/call/"),
    ("POST", _SESSION + r"/resources/read/$", "sessions_app.dataplane.resource_read", "sessions/<id>/resources/read/"),
    ("POST", _SESSION + r"/prompts/get/$", "sessions_app.dataplane.prompt_get", "sessions/<id>/prompts/get/"),
    ("POST", _SESSION + r"/messages/$", "sessions_app.dataplane.message_send", "sessions/<id>/messages/"),
]
# ASGI applications on the data plane, on every profile (they choose their database access).
DATA_PLANE_APPS = [
    (r"^/mcp/sessions/(?P<session_id>[^/]+)/?$", "sessions_app.mcp_server.application", "mcp/sessions/<id>/"),
    (_SESSION + r"/events/$", "sessions_app.streams.events_app", "sessions/<id>/events/"),
    (
        r"^/agentapi/sessions/(?P<session_id>[^/]+)/(?P<endpoint>status|messages|message|events)/?$",
        "sessions_app.streams.agentapi",
        "agentapi/sessions/<id>/<endpoint>",
    ),
]
# Called on the web process's event loop before it serves its first request.
EVENT_LOOP_STARTUP = ["mcp.pool.adopt_running_loop", "agentapi.db.aio.listen_for_changes"]
# Its database connections per web process, and how long a request waits for one before 503.
DATA_PLANE_DATABASE_CONNECTIONS = env.int("DATA_PLANE_DATABASE_CONNECTIONS", default=10)
DATA_PLANE_DATABASE_TIMEOUT = env.float("DATA_PLANE_DATABASE_TIMEOUT", default=5.0)
# A tool call's caller and configuration, kept while PostgreSQL announces no change to them
# (mcp.dataplane's access cache): the longest an entry is used all the same. 0 turns it off.
DATA_PLANE_ACCESS_CACHE_SECONDS = env.float("DATA_PLANE_ACCESS_CACHE_SECONDS", default=60.0)
# How often each web process checks that PostgreSQL's change notifications reach it (a heartbeat
# of its own, sent and heard back): one missing for twice this long and nothing kept is used.
CHANGES_HEARTBEAT_SECONDS = env.float("CHANGES_HEARTBEAT_SECONDS", default=5.0)
# The largest upstream result passed on (bytes of its JSON); a larger one is a 502.
MCP_MAX_RESULT_BYTES = env.int("MCP_MAX_RESULT_BYTES", default=10 * 1024 * 1024)
MCP_HEALTH_DISABLE_AFTER = env.int("MCP_HEALTH_DISABLE_AFTER", default=5)  # failed checks in a row
CELERY_BEAT_SCHEDULE["check-mcp-servers"]["schedule"] = MCP_HEALTH_CHECK_INTERVAL

PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default="")
# Readiness answers 503 when one of these fails; others only make it "degraded". Without Redis the
# platform goes on (local breakers, no shared cache), so by default only the database is required.
READINESS_REQUIRED = env.list("READINESS_REQUIRED", default=["database"])
# Readiness answers within this many seconds; a check still running by then has failed.
READINESS_TIMEOUT = env.float("READINESS_TIMEOUT", default=0.8)

LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
ACCESS_LOG = env.bool("ACCESS_LOG", default=True)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "agentapi.logging.ContextFilter"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
            "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
        }
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["context"]}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.server": {"level": "WARNING"},
        "django.request": {"level": "ERROR"},
        # The HTTP clients write a line per request at INFO: every upstream MCP message would add
        # a log line (and its CPU) to a call that already has its access-log line and audit event.
        "httpx": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "httpcore": {"level": "WARNING"},
        "httpcore2": {"level": "WARNING"},
    },
}

# Agent sessions: an idle session expires after SESSION_IDLE_TTL_SECONDS (sliding on every use),
# any session after SESSION_MAX_AGE_SECONDS.
SESSION_IDLE_TTL_SECONDS = env.int("SESSION_IDLE_TTL_SECONDS", default=3600)
SESSION_MAX_AGE_SECONDS = env.int("SESSION_MAX_AGE_SECONDS", default=86400)
# A use slides the idle time in Redis at once; the database's copy (`last_active_at`, `expires_at`)
# is written at most this often per session (sessions_app.liveness).
SESSION_TOUCH_INTERVAL_SECONDS = env.int("SESSION_TOUCH_INTERVAL_SECONDS", default=60)
# Each session's own directory (<root>/<organization id>/<session id>/, mode 0700), removed when it
# ends; a stdio template's `{workspace}` argument names it. Shared storage when web processes and
# workers run on several machines. Web processes end a workspace's stdio servers this often
# after it is removed.
SESSION_WORKSPACE_ROOT = env.str("SESSION_WORKSPACE_ROOT", default=str(BASE_DIR / "var" / "workspaces"))
SESSION_WORKSPACE_CHECK_SECONDS = env.float("SESSION_WORKSPACE_CHECK_SECONDS", default=2.0)
# How long an agent backend's test (one tiny request) may take.
AGENT_PROBE_TIMEOUT = env.float("AGENT_PROBE_TIMEOUT", default=20.0)
# One request to a model (a run makes one per step) may take this long; the whole run is bounded
# by its backend's `run_timeout_seconds`.
AGENT_REQUEST_TIMEOUT = env.float("AGENT_REQUEST_TIMEOUT", default=120.0)
# Each backend's circuit breaker: open after this many failed requests in a row (connection
# errors, 5xx; shared by every process), refusing runs at once for AGENT_BREAKER_RESET_SECONDS.
AGENT_BREAKER_FAIL_MAX = env.int("AGENT_BREAKER_FAIL_MAX", default=5)
AGENT_BREAKER_RESET_SECONDS = env.float("AGENT_BREAKER_RESET_SECONDS", default=30.0)
# A run's worker writes a heartbeat this often (and sees a cancel within it); a running run whose
# heartbeat is older than AGENT_RUN_LOST_SECONDS has lost its worker and is failed by the reaper,
# as is one no worker took within AGENT_RUN_QUEUE_SECONDS.
AGENT_RUN_HEARTBEAT_SECONDS = env.float("AGENT_RUN_HEARTBEAT_SECONDS", default=2.0)
AGENT_RUN_LOST_SECONDS = env.float("AGENT_RUN_LOST_SECONDS", default=30.0)
AGENT_RUN_QUEUE_SECONDS = env.float("AGENT_RUN_QUEUE_SECONDS", default=600.0)
# A run's task is queued after its message is committed. One no worker has taken after
# AGENT_RUN_REQUEUE_SECONDS (the broker was down, or lost its queue when Redis restarted) is queued
# again by the reaper (every AGENT_RUN_REAP_INTERVAL seconds); its claim makes a second delivery
# harmless.
AGENT_RUN_REQUEUE_SECONDS = env.float("AGENT_RUN_REQUEUE_SECONDS", default=20.0)
AGENT_RUN_REAP_INTERVAL = env.float("AGENT_RUN_REAP_INTERVAL", default=10.0)
CELERY_BEAT_SCHEDULE["reap-agent-runs"]["schedule"] = AGENT_RUN_REAP_INTERVAL
# Terminal agents started per session from a template (sessions_app.terminals). Where such an agent
# reaches the platform's session MCP endpoint (the data plane, as seen from the worker's host);
# how long it may take to answer GET /status after starting, and to stop after SIGTERM; how long it
# may sit idle before its worker stops it; its owner's lease in Redis and how often the owner
# renews it and checks the session, the process and the backend.
AGENT_TERMINAL_PLATFORM_URL = env.str("AGENT_TERMINAL_PLATFORM_URL", default="http://127.0.0.1:8000")
AGENT_TERMINAL_START_SECONDS = env.float("AGENT_TERMINAL_START_SECONDS", default=30.0)
AGENT_TERMINAL_STOP_SECONDS = env.float("AGENT_TERMINAL_STOP_SECONDS", default=5.0)
AGENT_TERMINAL_IDLE_SECONDS = env.float("AGENT_TERMINAL_IDLE_SECONDS", default=1800.0)
AGENT_TERMINAL_LEASE_SECONDS = env.float("AGENT_TERMINAL_LEASE_SECONDS", default=30.0)
AGENT_TERMINAL_CHECK_SECONDS = env.float("AGENT_TERMINAL_CHECK_SECONDS", default=5.0)
# A run is handed to the node that owns its session's terminal only if that node answers a ping
# within this (else its terminal is presumed gone and a new one started).
AGENT_TERMINAL_PING_SECONDS = env.float("AGENT_TERMINAL_PING_SECONDS", default=1.0)
# Every worker also takes tasks sent to it by name (`<node>.dq`): a run goes to the node that owns
# its session's terminal agent.
CELERY_WORKER_DIRECT = True
# Streaming text is stored and sent as `message_update` events at most this often per message.
AGENT_TEXT_COALESCE_SECONDS = env.float("AGENT_TEXT_COALESCE_SECONDS", default=0.1)
# An event stream sends a heartbeat comment this often; while Redis is unreachable it reads the
# database this often instead of waiting to be woken.
SESSION_EVENTS_HEARTBEAT_SECONDS = env.float("SESSION_EVENTS_HEARTBEAT_SECONDS", default=15.0)
SESSION_EVENTS_POLL_SECONDS = env.float("SESSION_EVENTS_POLL_SECONDS", default=1.0)
