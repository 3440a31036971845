"""The one settings module, driven by environment variables (see README.md)."""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config.env import env_ae_title, env_bool, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")) or BASE_DIR / "var")

DEBUG = env_bool("DEBUG", True)

_DEV_SECRET = "dev-only-insecure-key-do-not-use-in-production"  # noqa: S105
SECRET_KEY = env_str("SECRET_KEY") or ""
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [])
if not DEBUG:
    if not SECRET_KEY:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("ALLOWED_HOSTS must be set when DEBUG is off")
else:
    SECRET_KEY = SECRET_KEY or _DEV_SECRET
    ALLOWED_HOSTS = ALLOWED_HOSTS or ["localhost", "127.0.0.1", "[::1]", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "guardian",
    "django_htmx",
    "core",
    "ris",
    "ris.hl7",
    "ris.billing",
    "worklist",
    "pacs",
    "reporting",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "core.middleware.LoginRequiredMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

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
                "core.context_processors.navigation",
            ],
        },
    },
]

# Embedded default: one SQLite file. DATABASE_URL=postgres://... for the real thing.
DATABASE_URL = env_str("DATABASE_URL") or ""
if not DATABASE_URL:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    DATABASE_URL = f"sqlite:///{VAR_DIR / 'rispacs.sqlite3'}"
try:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60)}
except Exception as exc:  # dj_database_url raises several types for a bad URL
    raise ImproperlyConfigured(f"DATABASE_URL is not a valid database URL: {exc}") from exc
_POSTGRESQL = DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql"
if _POSTGRESQL and env_bool("DATABASE_POOL", True):
    # A pool of connections per process: the DICOM and HL7 listeners serve each association
    # and connection on a thread of its own, and a fresh PostgreSQL connection per thread
    # costs more than the query it is for.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": env_int("DATABASE_POOL_MIN", 2, minimum=0),
        "max_size": env_int("DATABASE_POOL_MAX", 20, minimum=1),
        "timeout": env_int("DATABASE_POOL_TIMEOUT", 30, minimum=1),
    }
if _POSTGRESQL and env_bool("DATABASE_PREPARED_STATEMENTS", True):
    # Parameters bound by the server, and a statement run twice on a connection prepared:
    # PostgreSQL then plans it once per connection instead of for every execution (the
    # HL7 listener's statements cost a third less server CPU, C-FIND's planning goes).
    DATABASES["default"].setdefault("OPTIONS", {})["server_side_binding"] = True
    DATABASES["default"]["OPTIONS"]["prepare_threshold"] = env_int(
        "DATABASE_PREPARE_THRESHOLD", 2, minimum=0
    )
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    # Several processes (web, dicom, hl7) share the file: wait for locks, write-ahead log.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": env_int("SQLITE_BUSY_TIMEOUT", 20, minimum=1),
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;",
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "guardian.backends.ObjectPermissionBackend",
]
ANONYMOUS_USER_NAME = None  # guardian: no anonymous user; every page needs a login

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC") or "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = VAR_DIR / "staticfiles"
WHITENOISE_USE_FINDERS = DEBUG  # `make run` collects static files; DEBUG also serves them live
WHITENOISE_AUTOREFRESH = DEBUG

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_AGE = env_int("SESSION_COOKIE_AGE", 8 * 3600, minimum=60)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Basic first: an unauthenticated client is told to authenticate (401, WWW-Authenticate).
        "rest_framework.authentication.BasicAuthentication",
        # API clients: a token (core.authentication), no password hash per request.
        "core.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["core.permissions.ModelViewPermission"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "UNAUTHENTICATED_USER": None,
}

# The archive: files on local disk under STORAGE_DIR.
STORAGE_DIR = Path(env_str("STORAGE_DIR", str(VAR_DIR / "storage")) or VAR_DIR / "storage")

# DICOMweb: browser origins (scheme://host[:port]) allowed to call /dicomweb/ from their
# pages (CORS), e.g. a viewer served elsewhere; none by default.
DICOMWEB_CORS_ORIGINS = env_list("DICOMWEB_CORS_ORIGINS", [])

# Network listeners.
WEB_PORT = env_int("WEB_PORT", 8000, minimum=1, maximum=65535)
DICOM_AE_TITLE = env_ae_title("DICOM_AE_TITLE", "RISPACS")
DICOM_PORT = env_int("DICOM_PORT", 11112, minimum=0, maximum=65535)
DICOM_BIND_ADDRESS = env_str("DICOM_BIND_ADDRESS", "0.0.0.0") or "0.0.0.0"
# PS3.7 D.3.3.2: the largest PDU we accept; 0 would mean unlimited.
DICOM_MAX_PDU = env_int("DICOM_MAX_PDU", 262144, minimum=0)
# Dotted paths of functions that add presentation contexts and handlers to the one AE.
DICOM_SERVICES = env_list(
    "DICOM_SERVICES",
    [
        "pacs.dimse.access_service",
        "pacs.dimse.verification_service",
        "pacs.dimse.storage_service",
        "pacs.dimse.query_service",
        "pacs.dimse.retrieve_service",
        "pacs.dimse.commitment_service",
        "worklist.dimse.worklist_service",
        "worklist.dimse.mpps_service",
    ],
)
# Only known nodes (pacs.DicomNode) may associate, unless this is on (PS3.8 7.1.1.3).
DICOM_ACCEPT_UNKNOWN_AE = env_bool("DICOM_ACCEPT_UNKNOWN_AE", False)
# An instance already stored arriving again: keep (answer success), replace, or reject.
DICOM_DUPLICATE_POLICY = (env_str("DICOM_DUPLICATE_POLICY", "keep") or "keep").lower()
if DICOM_DUPLICATE_POLICY not in ("keep", "replace", "reject"):
    raise ImproperlyConfigured("DICOM_DUPLICATE_POLICY must be keep, replace or reject")
# The assigning authority of a Patient ID received without Issuer of Patient ID.
DICOM_DEFAULT_ISSUER = env_str("DICOM_DEFAULT_ISSUER", "LOCAL") or "LOCAL"
# Reconciliation: seconds a study coerced at ingest waits (its instances still arriving)
# before its stored headers are rewritten to the RIS values by the beat sweep.
RECONCILIATION_REWRITE_DELAY = env_int("RECONCILIATION_REWRITE_DELAY", 300, minimum=0)
# C-STORE acknowledges once the instance is durable in the intake journal; the index row
# follows from a background thread (pacs.journal). Off: index before acknowledging.
DICOM_INTAKE_JOURNAL = env_bool("DICOM_INTAKE_JOURNAL", True)
# Serve associations with core.dicom_reactor's waking loops (off: pynetdicom's polling ones).
DICOM_TUNED_TRANSPORT = env_bool("DICOM_TUNED_TRANSPORT", True)
# Listener processes accepting on DICOM_PORT (one socket, core.listeners): Python runs one
# thread at a time, so each core needs a process of its own. Default: one per core, at most 4.
DICOM_PROCESSES = env_int("DICOM_PROCESSES", min(os.cpu_count() or 1, 4), minimum=1)
# How many associations the DICOM listener serves at once.
DICOM_MAX_ASSOCIATIONS = env_int("DICOM_MAX_ASSOCIATIONS", 32, minimum=1)
HL7_PORT = env_int("HL7_PORT", 2575, minimum=0, maximum=65535)
# MLLP listener processes sharing HL7_PORT, as for DICOM: one per core, at most four.
HL7_PROCESSES = env_int("HL7_PROCESSES", min(os.cpu_count() or 1, 4), minimum=1)
HL7_BIND_ADDRESS = env_str("HL7_BIND_ADDRESS", "0.0.0.0") or "0.0.0.0"
HL7_SENDING_APPLICATION = env_str("HL7_SENDING_APPLICATION", "RISPACS") or "RISPACS"
HL7_SENDING_FACILITY = env_str("HL7_SENDING_FACILITY", "RADIOLOGY") or "RADIOLOGY"
# The assigning authority of a PID-3/MRG-1 identifier sent without one (CX.4); empty: refused.
HL7_DEFAULT_ASSIGNING_AUTHORITY = env_str("HL7_DEFAULT_ASSIGNING_AUTHORITY", "") or ""
# The HL7 version of what we send (MSH-12).
HL7_OUTBOUND_VERSION = env_str("HL7_OUTBOUND_VERSION", "2.5.1") or "2.5.1"
if HL7_OUTBOUND_VERSION not in ("2.3", "2.3.1", "2.4", "2.5", "2.5.1"):
    raise ImproperlyConfigured("HL7_OUTBOUND_VERSION must be one of 2.3, 2.3.1, 2.4, 2.5, 2.5.1")
# Outbox delivery: seconds to connect and to wait for the ACK; retry delays double from the
# first to the longest; every HL7_OUTBOX_SWEEP_SECONDS beat (or the hl7server without a
# broker) sends whatever is due.
HL7_CONNECT_TIMEOUT = env_int("HL7_CONNECT_TIMEOUT", 10, minimum=1)
HL7_ACK_TIMEOUT = env_int("HL7_ACK_TIMEOUT", 30, minimum=1)
HL7_RETRY_DELAY = env_int("HL7_RETRY_DELAY", 10, minimum=1)
HL7_MAX_RETRY_DELAY = env_int("HL7_MAX_RETRY_DELAY", 600, minimum=1)
HL7_OUTBOX_SWEEP_SECONDS = env_int("HL7_OUTBOX_SWEEP_SECONDS", 30, minimum=1)
# The Celery queue of the outbox tasks; empty: the default queue.
HL7_TASK_QUEUE = env_str("HL7_TASK_QUEUE", "") or ""

# Minutes after an exam is performed (MPPS completed) before the boards flag it when no
# images have been matched to its order.
EXAM_IMAGES_EXPECTED_MINUTES = env_int("EXAM_IMAGES_EXPECTED_MINUTES", 30, minimum=1)
# Minutes past the booked start before the boards mark a patient not yet examined as late.
EXAM_LATE_MINUTES = env_int("EXAM_LATE_MINUTES", 15, minimum=1)

# Minutes a radiologist's claim on a study lasts before another may take it.
READING_CLAIM_MINUTES = env_int("READING_CLAIM_MINUTES", 30, minimum=1)

# Numbering: accession numbers and the root for UIDs this system makes.
ACCESSION_PREFIX = env_str("ACCESSION_PREFIX", "A") or ""
if len(ACCESSION_PREFIX) > 4 or not ACCESSION_PREFIX.isalnum():
    raise ImproperlyConfigured("ACCESSION_PREFIX must be 1-4 letters or digits")
# The organisation's UID root, ending in a dot; empty: UUID-derived UIDs under 2.25 (PS3.5 B.2).
DICOM_UID_ROOT = env_str("DICOM_UID_ROOT", "") or None
if DICOM_UID_ROOT and (
    not DICOM_UID_ROOT.endswith(".")
    or len(DICOM_UID_ROOT) > 40
    or not all(part.isdigit() for part in DICOM_UID_ROOT[:-1].split("."))
):
    raise ImproperlyConfigured(
        "DICOM_UID_ROOT must be digits and dots, end with a dot, at most 40 chars"
    )
INSTITUTION_NAME = env_str("INSTITUTION_NAME", "Demo Imaging Centre") or ""
# The currency of the catalogue's prices and of the charges (ISO 4217 code).
BILLING_CURRENCY = (env_str("BILLING_CURRENCY", "USD") or "USD").upper()
if len(BILLING_CURRENCY) != 3 or not BILLING_CURRENCY.isalpha():
    raise ImproperlyConfigured("BILLING_CURRENCY must be an ISO 4217 code such as USD or EUR")
# The report PDF's letterhead: the address under the institution's name ("\n" for new lines).
INSTITUTION_ADDRESS = (env_str("INSTITUTION_ADDRESS", "") or "").replace("\\n", "\n")

# Celery: with no broker, tasks run in-process (the embedded default).
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "") or ""
CELERY_TASK_ALWAYS_EAGER = not CELERY_BROKER_URL
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_RESULT_BACKEND = env_str("CELERY_RESULT_BACKEND", "") or None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE = {
    "worker-heartbeat": {"task": "core.tasks.record_worker_heartbeat", "schedule": 60.0},
    "hl7-outbox-sweep": {
        "task": "ris.hl7.tasks.sweep_outbox",
        "schedule": float(HL7_OUTBOX_SWEEP_SECONDS),
        "options": {"queue": HL7_TASK_QUEUE} if HL7_TASK_QUEUE else {},
    },
    # Storage Commitment results not sent yet (a lost task, a node that was away).
    "commitment-report-sweep": {
        "task": "pacs.tasks.sweep_commitment_reports",
        "schedule": 60.0,
    },
    # Stored headers to rewrite after reconciliation (coerced at ingest, or a lost task).
    "header-rewrite-sweep": {
        "task": "pacs.tasks.sweep_header_rewrites",
        "schedule": 60.0,
    },
    # Signed report versions not yet stored in their study (a lost or failed task).
    "report-archive-sweep": {
        "task": "reporting.tasks.sweep_unarchived_reports",
        "schedule": 300.0,
    },
}

LOG_LEVEL = env_str("LOG_LEVEL", "INFO") or "INFO"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"pynetdicom": {"level": env_str("DICOM_LOG_LEVEL", "WARNING") or "WARNING"}},
}
