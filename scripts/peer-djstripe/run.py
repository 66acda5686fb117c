#!/usr/bin/env python3
"""A peer side by side: our `billing serve` and dj-stripe's webhook endpoint (Django under
gunicorn, sync workers, one per core), on the same PostgreSQL, in the same run, fed the SAME
signed `customer.subscription.updated` events.

What it does, in order:
1. creates two PostgreSQL databases with random names (both dropped at the end);
2. starts the local fake Stripe API (fake_stripe.py), the only Stripe dj-stripe reaches;
3. starts `billing serve` (MIGRATE=on-start migrates its database), runs dj-stripe's
   migrations, then preloads both with the same N customers, each linked to a user and
   holding one active subscription (ours: users + stripe_customers + stripe_subscriptions
   in SQL, as bench webhooks.rs seeds; dj-stripe: preload_djstripe.py);
4. starts gunicorn with --workers (default: the number of cores), sync worker class;
5. sends event i (the same bytes and Stripe-Signature to both; event i moves subscription
   sub_i from active to past_due) from --senders concurrent senders, interleaved in rounds
   A, B, A, B…, each side walking the same sequence of events from its own cursor, so every
   delivery is for a customer no earlier delivery to that server used;
6. prints deliveries/s, p50/p99/max, failures, machine busy % (/proc/stat) and each server's
   CPU per delivery, per side, and the ratio; the fake's calls per route;
7. verifies in each database that every event answered 200 changed its subscription (and,
   for ours, the user) to past_due and nothing else changed, then drops both databases.

usage: run.py [--customers 50000] [--senders 8] [--rounds 4] [--seconds 10] [--workers N]
              [--billing /work/wt-peer-bin/billing] [--fixtures /tmp/fixtures3.json]
Run it with the virtualenv's python that has requirements.txt installed.
"""
import argparse
import hashlib
import hmac
import http.client
import json
import os
import platform
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
SECRET = "whsec_benchSigningSecret0123456789abcdef"
PG = dict(host="127.0.0.1", port=5432, user="postgres")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(db, sql, capture=True):
    out = subprocess.run(
        ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-h", PG["host"], "-U", PG["user"],
         "-d", db, "-c", sql], check=True, capture_output=capture, text=True)
    return out.stdout.strip() if capture else ""


def wait_http(url, what, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode} before it served")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answered
        except OSError:
            time.sleep(0.2)
    sys.exit(f"{what} did not answer {url} within {timeout} s")


# ---- CPU accounting ---------------------------------------------------------------------------

def machine_ticks():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]), idle


def process_tree(pid):
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return pids


def cpu_seconds(pid):
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds(db):
    """CPU of the PostgreSQL backends serving database `db` (their title names it)."""
    total = 0
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                title = f.read()
            if not title.startswith(b"postgres: ") or f" {db} ".encode() not in title:
                continue
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


# ---- events -----------------------------------------------------------------------------------

FAKE_PID = [0]
MARK = "987654321"


class Events:
    """Event i, identical bytes for both servers: one template, ids substituted, signed once
    per body with the same timestamp."""

    def __init__(self, created):
        import shapes
        self.created = created
        self.template = json.dumps(shapes.event(f"evt_peer_{MARK}", int(MARK), created),
                                   separators=(",", ":"))
        assert self.template.count(MARK) >= 4

    def get(self, i):
        body = self.template.replace(MARK, str(i)).encode()
        t = str(self.created).encode()
        sig = hmac.new(SECRET.encode(), t + b"." + body, hashlib.sha256).hexdigest()
        return body, f"t={self.created},v1={sig}"


# ---- senders ----------------------------------------------------------------------------------

class Side:
    def __init__(self, name, host, port, path, pid, db):
        self.name, self.host, self.port, self.path, self.pid = name, host, port, path, pid
        self.db = db
        self.cursor = 0  # next event index - 1
        self.ok_indexes = []
        self.latencies = []
        self.failures = 0
        self.failure_samples = []
        self.not_applied = 0
        self.seconds = 0.0
        self.busy_ticks = 0
        self.all_ticks = 0
        self.server_cpu = 0.0
        self.postgres_cpu = 0.0
        self.driver_cpu = 0.0
        self.fake_cpu = 0.0
        self.lock = threading.Lock()

    def take(self):
        with self.lock:
            self.cursor += 1
            return self.cursor


def sender(side, events, stop_at, limit, out):
    conn = None
    lat, ok, failures, samples, not_applied = [], [], 0, [], 0
    while time.perf_counter() < stop_at:
        i = side.take()
        if i > limit:
            break
        body, sig = events.get(i)
        started = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPConnection(side.host, side.port, timeout=30)
            conn.request("POST", side.path, body=body,
                         headers={"Content-Type": "application/json; charset=utf-8",
                                  "Stripe-Signature": sig, "User-Agent": "Stripe/1.0"})
            resp = conn.getresponse()
            data = resp.read()
            elapsed = time.perf_counter() - started
            if resp.getheader("Connection", "").lower() == "close" or resp.will_close:
                conn.close()
                conn = None
            if resp.status == 200:
                lat.append(elapsed)
                ok.append(i)
                if side.name == "billing" and b'"applied"' not in data:
                    not_applied += 1
            else:
                failures += 1
                if len(samples) < 3:
                    samples.append(f"{resp.status} {data[:200]!r}")
        except (OSError, http.client.HTTPException) as e:
            failures += 1
            if len(samples) < 3:
                samples.append(repr(e))
            if conn is not None:
                conn.close()
            conn = None
    if conn is not None:
        conn.close()
    out.append((lat, ok, failures, samples, not_applied))


def phase(side, events, senders, seconds, limit):
    t0, i0 = machine_ticks()
    c0, p0, d0 = cpu_seconds(side.pid), postgres_cpu_seconds(side.db), time.process_time()
    f0 = cpu_seconds(FAKE_PID[0])
    started = time.perf_counter()
    stop_at = started + seconds
    out = []
    threads = [threading.Thread(target=sender, args=(side, events, stop_at, limit, out))
               for _ in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ended = time.perf_counter()
    t1, i1 = machine_ticks()
    c1, p1, d1 = cpu_seconds(side.pid), postgres_cpu_seconds(side.db), time.process_time()
    side.fake_cpu += cpu_seconds(FAKE_PID[0]) - f0
    n = 0
    for lat, ok, failures, samples, not_applied in out:
        side.latencies.extend(lat)
        side.ok_indexes.extend(ok)
        side.failures += failures
        side.failure_samples.extend(samples)
        side.not_applied += not_applied
        n += len(lat)
    side.seconds += ended - started
    side.busy_ticks += (t1 - t0) - (i1 - i0)
    side.all_ticks += t1 - t0
    side.server_cpu += c1 - c0
    side.postgres_cpu += p1 - p0
    side.driver_cpu += d1 - d0
    busy = ((t1 - t0) - (i1 - i0)) / max(t1 - t0, 1) * 100
    print(f"  {side.name:<9} {n:>6} deliveries in {ended - started:5.1f} s: "
          f"{n / (ended - started):7.1f}/s, machine {busy:.0f}% busy", flush=True)


def pct(values, q):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1e3


def summary(side):
    n = len(side.latencies)
    rate = n / max(side.seconds, 1e-9)
    return dict(name=side.name, deliveries=n, seconds=side.seconds, rate=rate,
                p50=pct(side.latencies, 0.50), p99=pct(side.latencies, 0.99),
                max=max(side.latencies) * 1e3 if n else float("nan"),
                failures=side.failures, busy=side.busy_ticks / max(side.all_ticks, 1) * 100,
                server_ms=side.server_cpu * 1e3 / max(n, 1),
                postgres_ms=side.postgres_cpu * 1e3 / max(n, 1),
                driver_ms=side.driver_cpu * 1e3 / max(n, 1),
                fake_ms=side.fake_cpu * 1e3 / max(n, 1))


# ---- main -------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--customers", type=int, default=50000)
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10, help="per side per round")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--billing", default="/work/wt-peer-bin/billing")
    ap.add_argument("--fixtures", default=os.environ.get("PEER_FIXTURES", "/tmp/fixtures3.json"))
    ap.add_argument("--keep", action="store_true", help="do not drop the databases")
    args = ap.parse_args()
    os.environ["PEER_FIXTURES"] = args.fixtures
    sys.path.insert(0, HERE)

    import django
    import djstripe
    import gunicorn
    import stripe as stripe_lib
    from importlib.metadata import version

    started_utc = datetime.now(timezone.utc)
    tag = secrets.token_hex(4)
    ours_db, djs_db = f"peer_ours_{tag}", f"peer_djstripe_{tag}"
    procs = []
    print(f"{started_utc:%Y-%m-%d %H:%M} UTC; command: {' '.join(sys.argv)}")
    print(f"versions: dj-stripe {version('dj-stripe')}, Django {django.get_version()}, "
          f"gunicorn {gunicorn.__version__}, stripe-python {stripe_lib.VERSION}, "
          f"psycopg {version('psycopg')}, Python {platform.python_version()}, "
          f"{psql('postgres', 'SELECT version()').split(' on ')[0]}; "
          f"billing {subprocess.run([args.billing, '--version'], capture_output=True, text=True).stdout.strip()}; "
          f"{os.cpu_count()} cores")
    print(f"databases {ours_db}, {djs_db}; {args.customers} customers; {args.senders} senders; "
          f"{args.rounds} rounds of {args.seconds:g} s per side; gunicorn {args.workers} sync workers")
    for db in (ours_db, djs_db):
        psql("postgres", f"CREATE DATABASE {db}")
    try:
        run(args, ours_db, djs_db, procs)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(procs):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if not args.keep:
            for db in (ours_db, djs_db):
                psql("postgres", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            print(f"dropped {ours_db} and {djs_db}")


def run(args, ours_db, djs_db, procs):
    py = sys.executable
    fake_port, ours_port, djs_port = free_port(), free_port(), free_port()
    fake_url = f"http://127.0.0.1:{fake_port}"
    log = lambda name: open(f"/tmp/peer-djstripe-{name}.log", "w")  # noqa: E731

    fake = subprocess.Popen([py, os.path.join(HERE, "fake_stripe.py"), str(fake_port)],
                            cwd=HERE, stdout=log("fake"), stderr=subprocess.STDOUT)
    procs.append(fake)
    FAKE_PID[0] = fake.pid

    env = dict(os.environ, DATABASE_URL=f"postgres://{PG['user']}@127.0.0.1:5432/{ours_db}",
               BIND_ADDR=f"127.0.0.1:{ours_port}", STRIPE_WEBHOOK_SECRETS=SECRET,
               STRIPE_MODE="test", MIGRATE="on-start", RUST_LOG="warn", LOG_FORMAT="text")
    ours = subprocess.Popen([args.billing, "serve"], env=env, stdout=log("billing"),
                            stderr=subprocess.STDOUT)
    procs.append(ours)
    wait_http(fake_url + "/__calls", "fake Stripe", fake)
    wait_http(f"http://127.0.0.1:{ours_port}/healthz", "billing serve", ours)

    djenv = dict(os.environ, PEER_DB_NAME=djs_db, PEER_DB_USER=PG["user"],
                 PEER_FAKE_STRIPE=fake_url, DJANGO_SETTINGS_MODULE="peerproj.settings")
    t = time.time()
    subprocess.run([py, "manage.py", "migrate", "-v0"], cwd=HERE, env=djenv, check=True)
    print(f"dj-stripe migrated in {time.time() - t:.1f} s")

    # Preload ours, as bench webhooks.rs does (users linked to customers), plus the active
    # subscription each customer holds.
    import shapes
    n = args.customers
    t = time.time()
    period_end = shapes.START + shapes.PERIOD
    psql(ours_db, f"""
        INSERT INTO users (email, display_name, stripe_customer_id, subscription_id,
                           subscription_status, current_period_end)
        SELECT 'u' || g || '@bench.test', 'User ' || g, 'cus_' || g, 'sub_' || g, 'active',
               to_timestamp({period_end}) FROM generate_series(1, {n}) g;
        INSERT INTO stripe_customers (customer_id, user_id)
        SELECT stripe_customer_id, id FROM users WHERE stripe_customer_id IS NOT NULL;
        INSERT INTO stripe_subscriptions (subscription_id, customer_id, status,
                                          current_period_end, created, lifecycle_rank)
        SELECT 'sub_' || g, 'cus_' || g, 'active', to_timestamp({period_end}),
               {shapes.START}, 2 FROM generate_series(1, {n}) g;
        ANALYZE users; ANALYZE stripe_customers; ANALYZE stripe_subscriptions;""")
    print(f"billing preloaded {n} customers in {time.time() - t:.1f} s")
    t = time.time()
    djs_path_base = f"http://127.0.0.1:{djs_port}/stripe/webhook/"
    uuid = subprocess.run([py, "preload_djstripe.py", str(n), SECRET, djs_path_base],
                          cwd=HERE, env=djenv, check=True, capture_output=True,
                          text=True).stdout.strip().splitlines()[-1]
    print(f"dj-stripe preloaded {n} customers in {time.time() - t:.1f} s")
    psql("postgres", "CHECKPOINT")

    djs = subprocess.Popen(
        [os.path.join(os.path.dirname(py), "gunicorn"), "--workers", str(args.workers),
         "--worker-class", "sync", "--bind", f"127.0.0.1:{djs_port}", "--backlog", "2048",
         "--timeout", "60", "peerproj.wsgi"],
        cwd=HERE, env=djenv, stdout=log("gunicorn"), stderr=subprocess.STDOUT)
    procs.append(djs)
    wait_http(f"http://127.0.0.1:{djs_port}/", "gunicorn", djs)

    events = Events(int(time.time()))
    sides = [Side("billing", "127.0.0.1", ours_port, "/webhooks/stripe", ours.pid, ours_db),
             Side("dj-stripe", "127.0.0.1", djs_port, f"/stripe/webhook/{uuid}/", djs.pid, djs_db)]
    calls_before = json.load(urllib.request.urlopen(fake_url + "/__calls"))

    # Warm-up: each server's workers and connections, on events past the measured range.
    for side in sides:
        saved = side.cursor
        side.cursor = n - 4 * args.senders
        phase(side, events, args.senders, 1.0, n)
        side.cursor = saved
        side.warm_ok = len(side.ok_indexes)
        side.latencies, side.ok_indexes, side.failures = [], [], 0
        side.failure_samples, side.not_applied, side.seconds = [], 0, 0.0
        side.busy_ticks = side.all_ticks = 0
        side.server_cpu = side.postgres_cpu = side.driver_cpu = side.fake_cpu = 0.0
    calls_warm = json.load(urllib.request.urlopen(fake_url + "/__calls"))
    limit = n - 4 * args.senders  # measured events stay below the warm-up's customers

    print(f"load average before the rounds: {open('/proc/loadavg').read().split()[:3]}")
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", flush=True)
        for side in sides:
            phase(side, events, args.senders, args.seconds, limit)
    print(f"load average after the rounds: {open('/proc/loadavg').read().split()[:3]}")
    calls_after = json.load(urllib.request.urlopen(fake_url + "/__calls"))

    print(f"\n{'server':<10} {'deliveries':>10} {'seconds':>8} {'per s':>8} "
          f"{'p50/p99/max ms':>22} {'failed':>6} {'busy':>5} {'server CPU/delivery':>20} "
          f"{'postgres CPU/delivery':>22} {'sender CPU/delivery':>20} {'fake Stripe CPU/delivery':>25}")
    results = [summary(s) for s in sides]
    for s in results:
        print(f"{s['name']:<10} {s['deliveries']:>10} {s['seconds']:>8.1f} {s['rate']:>8.1f} "
              f"{s['p50']:>6.1f}/{s['p99']:>6.1f}/{s['max']:>7.1f} {s['failures']:>6} "
              f"{s['busy']:>4.0f}% {s['server_ms']:>17.2f} ms {s['postgres_ms']:>19.2f} ms {s['driver_ms']:>17.2f} ms {s['fake_ms']:>22.2f} ms")
    a, b = results
    print(f"ratio billing ÷ dj-stripe: deliveries/s {a['rate'] / max(b['rate'], 1e-9):.1f}×; "
          f"p99 dj-stripe ÷ billing {b['p99'] / a['p99']:.1f}×")
    for side in sides:
        if side.failure_samples:
            print(f"{side.name} failures, first: {side.failure_samples[:3]}")
    if sides[0].not_applied:
        print(f"billing: {sides[0].not_applied} deliveries answered 200 but not `applied`")

    measured = {k: calls_after.get(k, 0) - calls_warm.get(k, 0) for k in calls_after}
    setup = {k: calls_before.get(k, 0) for k in calls_before}
    dj_n = len(sides[1].latencies) + sides[1].failures
    print(f"fake Stripe calls during setup (preload): {setup}")
    print(f"fake Stripe calls during the measured phases ({dj_n} dj-stripe deliveries sent): "
          f"{ {k: v for k, v in measured.items() if v} }")

    verify(args, ours_db, djs_db, sides)


def verify(args, ours_db, djs_db, sides):
    """Every event answered 200 changed its subscription to past_due, and nothing else did."""
    import shapes
    ok = True
    for side, db in zip(sides, (ours_db, djs_db)):
        idx = sorted(side.ok_indexes)
        psql(db, "CREATE TABLE peer_ok (n int PRIMARY KEY)")
        with subprocess.Popen(
                ["psql", "-X", "-q", "-h", PG["host"], "-U", PG["user"], "-d", db, "-c",
                 "COPY peer_ok FROM STDIN"], stdin=subprocess.PIPE, text=True) as p:
            p.communicate("\n".join(map(str, idx)) + ("\n" if idx else ""))
        st = shapes.EVENT_STATUS
        if side.name == "billing":
            checks = {
                "subscriptions past_due": f"SELECT count(*) FROM stripe_subscriptions s JOIN peer_ok o ON s.subscription_id = 'sub_' || o.n WHERE s.status = '{st}'",
                "users past_due": f"SELECT count(*) FROM users u JOIN peer_ok o ON u.stripe_customer_id = 'cus_' || o.n WHERE u.subscription_status = '{st}'",
                "events recorded": "SELECT count(*) FROM stripe_events e JOIN peer_ok o ON e.id = 'evt_peer_' || o.n",
                "subscriptions past_due, all": f"SELECT count(*) FROM stripe_subscriptions WHERE status = '{st}'",
            }
        else:
            checks = {
                "subscriptions past_due": f"SELECT count(*) FROM djstripe_subscription s JOIN peer_ok o ON s.id = 'sub_' || o.n WHERE s.stripe_data->>'status' = '{st}'",
                "triggers valid and processed": "SELECT count(*) FROM djstripe_webhookeventtrigger t JOIN peer_ok o ON t.body::jsonb->>'id' = 'evt_peer_' || o.n WHERE t.valid AND t.processed",
                "events recorded": "SELECT count(*) FROM djstripe_event e JOIN peer_ok o ON e.id = 'evt_peer_' || o.n",
                "subscriptions past_due, all": f"SELECT count(*) FROM djstripe_subscription WHERE stripe_data->>'status' = '{st}'",
            }
        got = {k: int(psql(db, q)) for k, q in checks.items()}
        expected = len(idx)
        # the warm-up's deliveries changed their subscriptions too
        good = expected > 0 and side.failures == 0 and all(
            v == (expected + side.warm_ok if k.endswith(", all") else expected)
            for k, v in got.items())
        ok &= good
        print(f"verify {side.name}: {expected} deliveries answered 200; {got} "
              f"({'OK' if good else 'MISMATCH'}; 'all' also counts the {side.warm_ok} of the warm-up)")
    if not ok:
        sys.exit("verification failed")


if __name__ == "__main__":
    main()
