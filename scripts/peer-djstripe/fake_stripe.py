"""A local fake of the few Stripe API calls dj-stripe makes while it processes the
benchmark's events. Python stdlib only.

Answers, in Stripe's object shapes (shapes.py):
  GET /v1/subscriptions/sub_N  the subscription as Stripe holds it after its event: status
                               shapes.EVENT_STATUS (each benchmark event says the same)
  GET /v1/customers/cus_N      the customer
  GET /v1/prices/…, /v1/plans/…, /v1/products/…, /v1/account
  GET /v1/products/…/features  an empty list
Anything else: 404 with Stripe's error body, and it is counted, so an unexpected call shows.
GET /__calls returns the count of every call by route ("GET /v1/subscriptions/{id}").

usage: python fake_stripe.py PORT
"""
import json
import re
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import shapes

CALLS = Counter()
LOCK = threading.Lock()
ROUTES = [
    (re.compile(r"^/v1/subscriptions/sub_(\d+)$"), "GET /v1/subscriptions/{id}",
     lambda m: shapes.subscription(int(m.group(1)), shapes.EVENT_STATUS)),
    (re.compile(r"^/v1/customers/cus_(\d+)$"), "GET /v1/customers/{id}",
     lambda m: shapes.customer(int(m.group(1)))),
    (re.compile(r"^/v1/prices/" + shapes.PRICE + "$"), "GET /v1/prices/{id}",
     lambda m: shapes.price()),
    (re.compile(r"^/v1/plans/" + shapes.PRICE + "$"), "GET /v1/plans/{id}",
     lambda m: dict(shapes.subscription(0, "active")["items"]["data"][0]["plan"])),
    (re.compile(r"^/v1/products/" + shapes.PRODUCT + "$"), "GET /v1/products/{id}",
     lambda m: shapes.product()),
    (re.compile(r"^/v1/account$"), "GET /v1/account", lambda m: shapes.account()),
    (re.compile(r"^/v1/products/" + shapes.PRODUCT + "/features$"),
     "GET /v1/products/{id}/features",
     lambda m: {"object": "list", "data": [], "has_more": False, "url": m.group(0)}),
]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", "req_fake")
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path.split("?")[0]
        if self.command == "GET" and path == "/__calls":
            with LOCK:
                return self.reply(200, dict(CALLS))
        if self.command == "GET":
            for pattern, name, make in ROUTES:
                m = pattern.match(path)
                if m:
                    with LOCK:
                        CALLS[name] += 1
                    return self.reply(200, make(m))
        with LOCK:
            CALLS[f"{self.command} {path} (404)"] += 1
        self.reply(404, {"error": {"type": "invalid_request_error", "code": "resource_missing",
                                   "message": f"No such route: {self.command} {path}"}})

    do_GET = do_POST = do_DELETE = handle_any


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    server.daemon_threads = True
    server.serve_forever()
