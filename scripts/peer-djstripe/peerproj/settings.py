"""Minimal Django project serving dj-stripe's webhook endpoint for the peer benchmark.

Everything comes from the environment set by run.py: PEER_DB_NAME (the benchmark's own
PostgreSQL database), PEER_FAKE_STRIPE (the local fake Stripe API root), PEER_API_KEY.
"""
import os

SECRET_KEY = "peer-benchmark-not-secret"
DEBUG = False  # DEBUG=True keeps every query in memory and enables the secret-override header
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
ROOT_URLCONF = "peerproj.urls"
WSGI_APPLICATION = "peerproj.wsgi.application"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
APPEND_SLASH = True

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "djstripe",
]
MIDDLEWARE = []  # the webhook view needs none of them (it is csrf_exempt)
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("PEER_DB_NAME", "peer_djstripe"),
        "USER": os.environ.get("PEER_DB_USER", "postgres"),
        "HOST": "127.0.0.1",
        "PORT": "5432",
        "CONN_MAX_AGE": None,  # one persistent connection per (sync) worker
    }
}
LOGGING = {
    "version": 1,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}

# dj-stripe
STRIPE_LIVE_MODE = False
STRIPE_TEST_SECRET_KEY = os.environ.get("PEER_API_KEY", "sk_test_peerbench0123456789abcdefghij")
STRIPE_API_HOST = os.environ.get("PEER_FAKE_STRIPE", "http://127.0.0.1:12111")
DJSTRIPE_FOREIGN_KEY_TO_FIELD = "id"
DJSTRIPE_WEBHOOK_VALIDATION = "verify_signature"
SILENCED_SYSTEM_CHECKS = ["djstripe.C001", "djstripe.W002"]
