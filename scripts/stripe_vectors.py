#!/usr/bin/env python3
"""Writes tests/fixtures/stripe_signature_vectors.json: Stripe-Signature cases made and judged
by Stripe's own Python library, so `cargo test` can check our verifier against it without
Python.

    python3 -m pip install stripe==16.1.0
    python3 scripts/stripe_vectors.py > tests/fixtures/stripe_signature_vectors.json

`.ci/run` regenerates the file and fails on any difference, so the vectors cannot drift from the
pinned library. Everything is deterministic: fixed secrets, bodies, timestamps and clock.
"""

import json
import sys
from unittest import mock

import stripe
from stripe import WebhookSignature

PINNED = "16.1.0"
SECRET = "whsec_vectors_current"
OTHER_SECRET = "whsec_vectors_other"
NOW = 1_767_225_600  # 2026-01-01T00:00:00Z
TOLERANCE = 300

BODY = json.dumps(
    {"id": "evt_vec_1", "object": "event", "type": "customer.subscription.updated",
     "created": NOW, "data": {"object": {"id": "sub_1", "customer": "cus_1", "status": "active"}}},
    separators=(",", ":"),
)
UNICODE_BODY = '{"id":"evt_vec_2","object":"event","note":"café – 東京 ✓","created":%d}' % NOW
CRLF_BODY = '{"id":"evt_vec_3",\r\n"object":"event"}\r\n'


def sign(payload, secret, timestamp):
    return WebhookSignature.generate_signature_header(payload, secret, timestamp)


def v1_of(header):
    return header.split(",v1=", 1)[1]


def judge(payload, header, secret):
    """What Stripe's library answers at NOW, as one of our verifier's outcomes."""
    with mock.patch("time.time", return_value=NOW):
        try:
            WebhookSignature.verify_header(payload, header, secret, TOLERANCE)
            return "ok"
        except stripe.SignatureVerificationError as err:
            message = str(err)
    for prefix, outcome in [
        ("No Stripe-Signature header", "missing"),
        ("No webhook secret value", "no_match"),
        ("Unable to extract timestamp", "malformed"),
        ("No signatures found with expected scheme", "malformed"),
        ("No signatures found matching", "no_match"),
        ("Timestamp outside the tolerance zone", "stale"),
    ]:
        if message.startswith(prefix):
            return outcome
    raise SystemExit(f"unexpected answer from stripe's library: {message}")


def cases():
    good = sign(BODY, SECRET, NOW)
    other = sign(BODY, OTHER_SECRET, NOW)
    yield "valid", BODY, SECRET, good
    yield "valid_a_minute_old", BODY, SECRET, sign(BODY, SECRET, NOW - 60)
    yield "valid_at_the_tolerance_edge", BODY, SECRET, sign(BODY, SECRET, NOW - TOLERANCE)
    # The tolerance bounds the age only: a signature from ahead of the verifier's clock passes.
    yield "valid_from_an_hour_ahead", BODY, SECRET, sign(BODY, SECRET, NOW + 3600)
    yield "valid_unicode_body", UNICODE_BODY, SECRET, sign(UNICODE_BODY, SECRET, NOW)
    yield "valid_crlf_body", CRLF_BODY, SECRET, sign(CRLF_BODY, SECRET, NOW)
    yield "several_v1_second_matches", BODY, SECRET, f"t={NOW},v1={v1_of(other)},v1={v1_of(good)}"
    yield "several_v1_first_matches", BODY, SECRET, f"t={NOW},v1={v1_of(good)},v1={'0' * 64}"
    yield "v1_and_v0", BODY, SECRET, f"{good},v0={'ab' * 32}"
    yield "v0_only", BODY, SECRET, f"t={NOW},v0={v1_of(good)}"
    yield "wrong_secret", BODY, SECRET, other
    yield "body_altered_by_one_byte", BODY.replace("active", "activf"), SECRET, good
    yield "body_with_trailing_newline", BODY + "\n", SECRET, good
    yield "stale_timestamp", BODY, SECRET, sign(BODY, SECRET, NOW - TOLERANCE - 1)
    yield "timestamp_changed_after_signing", BODY, SECRET, good.replace(f"t={NOW}", f"t={NOW - 1}")
    yield "signature_uppercase_hex", BODY, SECRET, f"t={NOW},v1={v1_of(good).upper()}"
    yield "signature_truncated", BODY, SECRET, f"t={NOW},v1={v1_of(good)[:-2]}"
    yield "no_timestamp", BODY, SECRET, f"v1={v1_of(good)}"
    yield "no_header", BODY, SECRET, ""
    yield "garbage_header", BODY, SECRET, "garbage"
    yield "empty_secret", BODY, "", sign(BODY, "", NOW)


def main():
    if stripe.VERSION != PINNED:
        raise SystemExit(f"stripe {stripe.VERSION} is installed; the vectors are made with {PINNED}")
    vectors = []
    for name, payload, secret, header in cases():
        vectors.append({
            "name": name,
            "payload": payload,
            "secret": secret,
            "header": header or None,
            "now": NOW,
            "tolerance_secs": TOLERANCE,
            "expect": judge(payload, header or None, secret),
        })
    document = {
        "generated_by": f"scripts/stripe_vectors.py with stripe=={PINNED}",
        "vectors": vectors,
    }
    json.dump(document, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
