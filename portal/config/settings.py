"""Portal settings, read from the environment (development defaults; see settings_production).

Environment: DJANGO_SECRET_KEY, DJANGO_DEBUG (off unless set: `make dev` sets it), DJANGO_ALLOWED_HOSTS,
DATABASE_URL (default: SQLite in var/portal/), PORTAL_STORAGE_DIR (uploaded images and heatmaps,
never under a public URL), TORCHSERVE_URL, TORCHSERVE_KEY / TORCHSERVE_WORKDIR, PORTAL_INFERENCE_PROTOCOL,
PORTAL_MODEL_URLS, PORTAL_MODELS, PORTAL_CELL_MODEL, PORTAL_DIFFERENTIAL_TARGET (white cells counted per specimen:
100 or 200), PORTAL_WORKERS (job worker processes per `manage.py qcluster`).
"""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from core import decode as image_limits
from core.registry import cell_model_names, model_names
from portal.analyses.differential import DEFAULT_TARGET_COUNT, TARGET_COUNTS
from portal.config.env import env_bool, env_int, env_list, env_map, env_str, parse_database_url

REPO_DIR = Path(__file__).resolve().parent.parent.parent
PORTAL_DIR = REPO_DIR / "portal"
VAR_DIR = Path(env_str("PORTAL_VAR_DIR", str(REPO_DIR / "var" / "portal")))

SECRET_KEY = env_str("DJANGO_SECRET_KEY", "dev-insecure-key-change-me-for-production-0123456789abcdef")
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "axes",
    "django_otp",
    "django_otp.plugins.otp_totp",
    "portal.accounts",
    "portal.audit",
    "portal.patients",
    "portal.analyses",
    "portal.models_registry",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "portal.accounts.middleware.SessionActivityMiddleware",
    "django_otp.middleware.OTPMiddleware",  # request.user.is_verified(): a TOTP code was given this session
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "portal.accounts.middleware.LoginRequiredMiddleware",
    "portal.accounts.middleware.SecondFactorRequiredMiddleware",
    "axes.middleware.AxesMiddleware",  # last: answers a locked-out login attempt
]

# Lockout after repeated failed logins (django-axes; audited as user.locked_out): per username and
# client address together, so a guesser is stopped without letting anyone lock a colleague out from
# elsewhere; the web form and the API token endpoint alike.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("PORTAL_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = env_int("PORTAL_LOCKOUT_MINUTES", 15) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "accounts/locked_out.html"

# Second factor (django-otp, TOTP authenticator apps): reviewers, admins and superusers give a code
# after their password before any page (portal/accounts/second_factor.py); the API token endpoint
# wants it as the `otp` field. Off only with DEBUG on (a developer's machine): never in production.
PORTAL_OTP_REQUIRED = env_bool("PORTAL_OTP_REQUIRED", True)
if not PORTAL_OTP_REQUIRED and not DEBUG:
    raise ImproperlyConfigured("PORTAL_OTP_REQUIRED=0 is allowed only with DJANGO_DEBUG=1 (development)")
OTP_TOTP_ISSUER = env_str("PORTAL_OTP_ISSUER", "Leukemia portal")
OTP_TOTP_THROTTLE_FACTOR = 1  # after n wrong codes in a row the next is refused for 2**(n-1) s (django-otp)
OTP_ADMIN_HIDE_SENSITIVE_DATA = True  # Django admin never shows a device's key or QR code

ROOT_URLCONF = "portal.config.urls"
WSGI_APPLICATION = "portal.config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [PORTAL_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.analyses.context_processors.disclaimer",
            ],
        },
    },
]

DATABASES = {
    "default": parse_database_url(env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'portal.sqlite3'}"), REPO_DIR)
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3") and DATABASES["default"]["NAME"] != ":memory:":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
# Persistent connections, checked before reuse: a restarted database costs one failed check, not errors.
DATABASES["default"].setdefault("CONN_MAX_AGE", env_int("PORTAL_DB_CONN_MAX_AGE", 60))
DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 10}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "analyses:dashboard"
LOGOUT_REDIRECT_URL = "accounts:login"

LANGUAGE_CODE = "en-gb"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = Path(env_str("PORTAL_STATIC_ROOT", str(VAR_DIR / "static")))
STATICFILES_DIRS = [PORTAL_DIR / "static"]
# WhiteNoise serves static files from the WSGI app (gunicorn under `make run`, also with DEBUG off);
# straight from the app directories, so no collectstatic step is needed on a developer machine.
WHITENOISE_USE_FINDERS = True
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise also serves collectstatic output from here

# Uploaded images and heatmaps: a private directory that no URL maps to; files are served only
# through authenticated, permission-checked views.
PORTAL_STORAGE_DIR = Path(env_str("PORTAL_STORAGE_DIR", str(VAR_DIR / "storage")))
# Upload limits default to the model server's own (core.decode), so the portal never stores an
# image that every model would refuse for its size, nor refuses one the models accept.
PORTAL_MAX_UPLOAD_BYTES = env_int("PORTAL_MAX_UPLOAD_BYTES", image_limits.MAX_BYTES)
PORTAL_MIN_IMAGE_SIDE = env_int("PORTAL_MIN_IMAGE_SIDE", image_limits.MIN_SIDE)
PORTAL_MAX_IMAGE_PIXELS = env_int("PORTAL_MAX_IMAGE_PIXELS", image_limits.MAX_PIXELS)
PORTAL_MAX_FILES_PER_UPLOAD = env_int("PORTAL_MAX_FILES_PER_UPLOAD", 20)
# Patient data rules (portal/patients/validators.py): an MRN regular expression if the lab has a
# format (default: any printable text), and the oldest plausible date of birth.
PORTAL_MRN_PATTERN = env_str("PORTAL_MRN_PATTERN", "")
PORTAL_MAX_AGE_YEARS = env_int("PORTAL_MAX_AGE_YEARS", 130)
# FHIR export (portal/analyses/fhir.py): the identifier systems of this lab's MRNs and accession numbers.
PORTAL_FHIR_MRN_SYSTEM = env_str("PORTAL_FHIR_MRN_SYSTEM", "urn:leukemia-portal:mrn")
PORTAL_FHIR_ACCESSION_SYSTEM = env_str("PORTAL_FHIR_ACCESSION_SYSTEM", "urn:leukemia-portal:accession")
# Django refuses more files than this before any view runs (400, answered by portal.errors).
DATA_UPLOAD_MAX_NUMBER_FILES = PORTAL_MAX_FILES_PER_UPLOAD
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

# TorchServe (inference contract: docs/guides/serving.md).
TORCHSERVE_URL = env_str("TORCHSERVE_URL", "http://127.0.0.1:8080").rstrip("/")
TORCHSERVE_KEY = env_str("TORCHSERVE_KEY", "")
TORCHSERVE_WORKDIR = env_str("TORCHSERVE_WORKDIR", str(REPO_DIR / ".torchserve"))  # holds key_file.json
TORCHSERVE_CONNECT_TIMEOUT_S = float(env_str("TORCHSERVE_CONNECT_TIMEOUT_S", "2"))
TORCHSERVE_READ_TIMEOUT_S = float(env_str("TORCHSERVE_READ_TIMEOUT_S", "12"))
# How the portal calls the models (portal/analyses/inference.py): "torchserve", TorchServe's REST contract,
# or "v2", the Open Inference Protocol, as KServe's predictors answer it. PORTAL_MODEL_URLS gives models
# their own base URL ("model=url,model=url": one KServe predictor each); the others use TORCHSERVE_URL.
PORTAL_INFERENCE_PROTOCOL = env_str("PORTAL_INFERENCE_PROTOCOL", "torchserve")
PORTAL_MODEL_URLS = env_map("PORTAL_MODEL_URLS", {})
PORTAL_MODELS = env_list("PORTAL_MODELS", model_names())  # default: every registered model
# The cell model run once per uploaded image (cells, annotated image, differential); "" turns it off.
PORTAL_CELL_MODEL = env_str("PORTAL_CELL_MODEL", cell_model_names()[0] if cell_model_names() else "")
# The white cells this lab counts per specimen (portal/analyses/differential.py: 100 or 200).
PORTAL_DIFFERENTIAL_TARGET = env_int("PORTAL_DIFFERENTIAL_TARGET", DEFAULT_TARGET_COUNT)
if PORTAL_DIFFERENTIAL_TARGET not in TARGET_COUNTS:
    raise ImproperlyConfigured(f"PORTAL_DIFFERENTIAL_TARGET must be one of {TARGET_COUNTS}")
# The shipped archives and cards (the base versions of the update loop: portal/models_registry,
# docs/guides/model_updates.md).
PORTAL_MODEL_STORE = Path(env_str("PORTAL_MODEL_STORE", str(REPO_DIR / "model_store")))

# The job queue (portal/jobs.py; django-q2 with its ORM broker in this database). The timings nest:
# worst job = connect + read timeout < job timeout < lease < redelivery ("retry"), so a job killed
# with its worker is delivered again within "retry" seconds and its lease has run out by then. The
# backoff before a retry is not waited out in a worker: the retry is a django-q Schedule due then.
PORTAL_MAX_ATTEMPTS = env_int("PORTAL_MAX_ATTEMPTS", 3)  # attempts that end in a server error (5xx, timeout)
PORTAL_RETRY_BASE_S = float(env_str("PORTAL_RETRY_BASE_S", "1"))
PORTAL_RETRY_MAX_DELAY_S = float(env_str("PORTAL_RETRY_MAX_DELAY_S", "8"))
PORTAL_WAIT_GIVE_UP_S = env_int("PORTAL_WAIT_GIVE_UP_S", 3600)  # model server unreachable this long: failed
PORTAL_JOB_TIMEOUT_S = env_int("PORTAL_JOB_TIMEOUT_S", 25)
PORTAL_JOB_LEASE_S = env_int("PORTAL_JOB_LEASE_S", 26)
PORTAL_JOB_REDELIVERY_S = env_int("PORTAL_JOB_REDELIVERY_S", 28)
PORTAL_ORPHAN_GRACE_S = env_int("PORTAL_ORPHAN_GRACE_S", 3600)
Q_CLUSTER = {
    "name": "portal",
    "orm": "default",
    "workers": env_int("PORTAL_WORKERS", 4),  # each waits on TorchServe most of the time
    "queue_limit": env_int("PORTAL_WORKERS", 4),  # prefetch no more than the workers can start
    "bulk": 1,
    "timeout": PORTAL_JOB_TIMEOUT_S,
    "retry": PORTAL_JOB_REDELIVERY_S,
    "max_attempts": 10,  # a job that crashes its worker 10 times is dropped; sweep() re-queues the analysis
    "ack_failures": False,
    "save_limit": -1,  # successful jobs leave no row (the analysis and its audit rows are the record)
    "catch_up": False,
    "poll": 0.2,
    "label": "Job queue",
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",  # first: anonymous requests get 401 + WWW-Authenticate
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["portal.api.permissions.ModelPermissions"],
    "DEFAULT_PAGINATION_CLASS": "portal.api.pagination.StrictPageNumberPagination",
    "PAGE_SIZE": 25,
    "DEFAULT_SCHEMA_CLASS": "portal.api.schema.PortalAutoSchema",  # every error answer documented
    "EXCEPTION_HANDLER": "portal.api.exceptions.audited_exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Leukemia portal API",
    "DESCRIPTION": "Patients, specimens, image analyses (upload), reviews, cells and the differential. "
    "Decision support only.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # request bodies get components of their own: files are binary, required text has minLength 1
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {
        "ClassLabelEnum": "portal.analyses.models.LABEL_CHOICES",
        "CellTypeEnum": "portal.analyses.models.CELL_LABEL_CHOICES",
        "ImageDecisionEnum": "portal.analyses.models.ImageReview.Decision",
        "ModelDecisionEnum": "portal.analyses.models.Review.Decision",
        "SpecimenDecisionEnum": "portal.analyses.models.SpecimenReview.Decision",
        "ReviewedCellTypeEnum": "portal.analyses.models.REVIEWED_LABEL_CHOICES",
    },
}

SESSION_COOKIE_HTTPONLY = True
# Idle timeout: a session ends after this long without the user's own requests; a request renews it at
# most once per PORTAL_SESSION_RENEW_S, the pages' background polling never (portal.accounts.middleware).
SESSION_COOKIE_AGE = env_int("PORTAL_IDLE_TIMEOUT_MINUTES", 30) * 60
PORTAL_SESSION_RENEW_S = env_int("PORTAL_SESSION_RENEW_S", 60)
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "portal": {"handlers": ["console"], "level": env_str("PORTAL_LOG_LEVEL", "INFO")},
        "django-q": {
            "handlers": ["console"],
            "level": env_str("PORTAL_QUEUE_LOG_LEVEL", "WARNING"),
            "propagate": False,
        },
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
    },
}
