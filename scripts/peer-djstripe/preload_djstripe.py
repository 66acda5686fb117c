"""Preloads dj-stripe's database for the peer benchmark (run by run.py, after `manage.py
migrate`): N Django users, each the subscriber of a Stripe customer cus_1…cus_N with one
active subscription sub_1…sub_N, and the WebhookEndpoint row that holds the signing secret.

The first customer, subscription, price and product go through dj-stripe's own
sync_from_stripe_data (which also records the API key and its Account, via GET /v1/account
on the fake); the rest are SQL copies of those rows with the ids changed, as the bench's
webhooks.rs seeds our side with SQL.

usage: python preload_djstripe.py N SECRET WEBHOOK_URL   (prints the endpoint's uuid)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "peerproj.settings")

import django  # noqa: E402

django.setup()

import stripe  # noqa: E402
from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402
from djstripe.models import Customer, Price, Product, Subscription, WebhookEndpoint  # noqa: E402

import shapes  # noqa: E402

n, secret, url = int(sys.argv[1]), sys.argv[2], sys.argv[3]
key = settings.STRIPE_TEST_SECRET_KEY

Product.sync_from_stripe_data(shapes.product())
Price.sync_from_stripe_data(shapes.price())
Customer.sync_from_stripe_data(shapes.customer(1))
Subscription.sync_from_stripe_data(
    stripe.Subscription.construct_from(shapes.subscription(1, shapes.PRELOAD_STATUS), key)
)
endpoint = WebhookEndpoint.objects.create(
    id="we_peerbench", livemode=False, api_version=shapes.API_VERSION, enabled_events=["*"],
    secret=secret, status="enabled", url=url, djstripe_validation_method="verify_signature",
)

with connection.cursor() as c:
    c.execute(
        "INSERT INTO auth_user (password, is_superuser, username, first_name, last_name, "
        "email, is_staff, is_active, date_joined) "
        "SELECT '!', false, 'u' || g, '', '', 'u' || g || '@bench.test', false, true, now() "
        "FROM generate_series(1, %s) g", [n])
    c.execute("UPDATE djstripe_customer SET subscriber_id = "
              "(SELECT id FROM auth_user WHERE username = 'u1') WHERE id = 'cus_1'")
    # copies of row 1: every id ending in _1 inside the stored Stripe object becomes _g
    copy = ("replace(replace(replace(replace(t.stripe_data::text, "
            "'\"cus_1\"', '\"cus_' || g || '\"'), 'sub_1\"', 'sub_' || g || '\"'), "
            "'\"si_1\"', '\"si_' || g || '\"'), 'u1@bench.test', 'u' || g || '@bench.test')::jsonb")
    c.execute(
        "INSERT INTO djstripe_customer (djstripe_created, djstripe_updated, stripe_data, id, "
        "livemode, created, metadata, email, djstripe_owner_account_id, subscriber_id) "
        f"SELECT now(), now(), {copy}, 'cus_' || g, t.livemode, t.created, t.metadata, "
        "'u' || g || '@bench.test', t.djstripe_owner_account_id, u.id "
        "FROM generate_series(2, %s) g JOIN auth_user u ON u.username = 'u' || g, "
        "djstripe_customer t WHERE t.id = 'cus_1'", [n])
    c.execute(
        "INSERT INTO djstripe_subscription (djstripe_created, djstripe_updated, stripe_data, id, "
        "livemode, created, metadata, customer_id, djstripe_owner_account_id) "
        f"SELECT now(), now(), {copy}, 'sub_' || g, t.livemode, t.created, t.metadata, "
        "'cus_' || g, t.djstripe_owner_account_id "
        "FROM generate_series(2, %s) g, djstripe_subscription t WHERE t.id = 'sub_1'", [n])
    c.execute(
        "INSERT INTO djstripe_subscriptionitem (djstripe_created, djstripe_updated, stripe_data, "
        "id, livemode, created, metadata, djstripe_owner_account_id, price_id, subscription_id) "
        f"SELECT now(), now(), {copy}, 'si_' || g, t.livemode, t.created, t.metadata, "
        "t.djstripe_owner_account_id, t.price_id, 'sub_' || g "
        "FROM generate_series(2, %s) g, djstripe_subscriptionitem t WHERE t.id = 'si_1'", [n])
    for table in ("auth_user", "djstripe_customer", "djstripe_subscription",
                  "djstripe_subscriptionitem"):
        c.execute(f"ANALYZE {table}")
print(endpoint.djstripe_uuid)
