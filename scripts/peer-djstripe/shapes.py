"""Stripe objects for the peer benchmark, in Stripe's real shapes.

The shapes come from Stripe's OpenAPI fixtures (github.com/stripe/openapi,
openapi/fixtures3.json; pass its path with --fixtures or PEER_FIXTURES). This module takes
each resource's keys and nesting from there and overwrites the values that must be
consistent (ids, customer, status, dates, the price and product of the item); fixture values
that make no sense for a live subscription (ended_at, canceled_at, a pause, a discount) are
cleared.
"""
import copy
import json
import os

API_VERSION = "2025-08-27.basil"  # any version with items.data[].current_period_end
PRICE = "price_peerbench"
PRODUCT = "prod_peerbench"
ACCOUNT = "acct_peerbench"
PERIOD = 30 * 86400

# What every benchmark event says, and therefore what the fake Stripe answers for a
# subscription once its event has been sent: the preload stores "active".
PRELOAD_STATUS = "active"
EVENT_STATUS = "past_due"

_fixtures = None


def fixtures():
    global _fixtures
    if _fixtures is None:
        path = os.environ.get("PEER_FIXTURES", "/tmp/fixtures3.json")
        with open(path) as f:
            _fixtures = json.load(f)["resources"]
    return _fixtures


def customer_id(n):
    return f"cus_{n}"


def subscription_id(n):
    return f"sub_{n}"


def product():
    p = copy.deepcopy(fixtures()["product"])
    p.update(id=PRODUCT, default_price=PRICE, name="Pro", description=None,
             package_dimensions=None, type="service", created=1700000000, updated=1700000000)
    return p


def price():
    p = copy.deepcopy(fixtures()["price"])
    p.update(id=PRICE, product=PRODUCT, created=1700000000, transform_quantity=None,
             custom_unit_amount=None)
    return p


def account():
    a = copy.deepcopy(fixtures()["account"])
    a.update(id=ACCOUNT, email="billing@peer.test", created=1700000000)
    return a


def customer(n):
    c = copy.deepcopy(fixtures()["customer"])
    c.update(id=customer_id(n), email=f"u{n}@bench.test", name=f"User {n}", discount=None,
             created=1700000000, invoice_prefix=f"PB{n:06X}"[:12], shipping=None)
    return c


START = 1796000000  # 2026-11-29: every subscription's current period starts here


def subscription(n, status):
    s = copy.deepcopy(fixtures()["subscription"])
    sid = subscription_id(n)
    start = START
    item = s["items"]["data"][0]
    item.update(id=f"si_{n}", subscription=sid, created=start, price=price(),
                current_period_start=start, current_period_end=start + PERIOD, quantity=1)
    # the legacy plan view of the same price, as Stripe shows it
    plan = item["plan"]
    plan.update(id=PRICE, product=PRODUCT, amount=2000, amount_decimal="2000",
                billing_scheme="per_unit", created=1700000000, currency="usd",
                interval="month", interval_count=1, livemode=False, metadata={},
                transform_usage=None)
    s["items"].update(data=[item], url=f"/v1/subscription_items?subscription={sid}")
    s.update(id=sid, customer=customer_id(n), status=status, created=start,
             start_date=start, billing_cycle_anchor=start, billing_cycle_anchor_config=None,
             cancel_at=None, canceled_at=None, ended_at=None, pause_collection=None,
             next_pending_invoice_item_invoice=None, latest_invoice=None, schedule=None,
             pending_update=None, pending_setup_intent=None, test_clock=None,
             trial_start=None, trial_end=None, livemode=False, discounts=[],
             default_payment_method=None, default_source=None, on_behalf_of=None,
             transfer_data=None)
    for k in ("current_period_start", "current_period_end"):  # older API versions
        s.pop(k, None)
    return s


def event(event_id, n, created):
    """A customer.subscription.updated event for subscription n, as Stripe sends it."""
    e = copy.deepcopy(fixtures()["event"])
    obj = subscription(n, EVENT_STATUS)
    e.update(id=event_id, type="customer.subscription.updated", created=created,
             api_version=API_VERSION, livemode=False, pending_webhooks=1,
             request={"id": None, "idempotency_key": None},
             data={"object": obj, "previous_attributes": {"status": PRELOAD_STATUS}})
    return e
