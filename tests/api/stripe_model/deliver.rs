//! Delivery the way Stripe does it, and `stripe-sync` runs from hosts with skewed clocks.
//!
//! Stripe's webhook documentation (docs.stripe.com/webhooks, "Event ordering", "Retry
//! behavior", "Handle duplicate events") says: events are not delivered in the order they
//! were created; an endpoint may receive an event more than once; failed deliveries are
//! retried with exponential back-off for up to three days in live mode, after which the event
//! is not sent again. The plan below draws those: reordering by independent delays of up to
//! three days, duplicates, and losses (an endpoint down for longer than the retries).

use std::process::Command;

use serde_json::Value;

use super::model::{DAY, HOUR, History};
use super::rng::Rng;

#[derive(Clone, Debug)]
pub enum Step {
    /// Delivers event `event` (an index into `History::events`) to API instance `instance`;
    /// `with_next`: at the same moment as the next step, also a delivery (Stripe sends
    /// concurrently, and the two instances then race on one database).
    Deliver {
        event: usize,
        instance: usize,
        with_next: bool,
    },
    /// Runs `stripe-sync` with Stripe's clock at the step's time and the host's clock `skew`
    /// seconds off it.
    Sync { skew: i64 },
}

/// The largest clock skew of a host running `stripe-sync`, either way.
pub const MAX_SKEW: i64 = 10 * 60;
/// The longest Stripe keeps retrying one event (live mode).
pub const MAX_DELAY: i64 = 3 * DAY;

/// Every step, with the instant it happens at, in time order.
pub fn plan(h: &History, rng: &mut Rng) -> Vec<(i64, Step)> {
    let mut steps = Vec::new();
    for (event, _) in h.events.iter().enumerate() {
        if rng.chance(0.07) {
            continue; // lost: the endpoint was down for all of Stripe's retries
        }
        let copies = if rng.chance(0.15) {
            2 + rng.below(2)
        } else {
            1
        };
        for _ in 0..copies {
            let delay = match rng.below(10) {
                0..=5 => rng.below_i64(60),
                6..=8 => rng.below_i64(6 * HOUR),
                _ => rng.below_i64(MAX_DELAY),
            };
            steps.push((
                h.events[event].created + delay,
                Step::Deliver {
                    event,
                    instance: rng.below(2),
                    with_next: false,
                },
            ));
        }
    }
    for _ in 0..rng.below(4) {
        // Half of the runs fall within a quarter of an hour of a change at Stripe: the case
        // where a host's clock, or a fetch racing an event, decides which state wins.
        let at = match h.events.get(rng.below(h.events.len())) {
            Some(near) if rng.chance(0.5) => near.created + rng.below_i64(30 * 60) - 15 * 60,
            _ => h.start + rng.below_i64(h.end - h.start),
        };
        let skew = rng.below_i64(2 * MAX_SKEW + 1) - MAX_SKEW;
        steps.push((at, Step::Sync { skew }));
    }
    steps.sort_by_key(|(at, _)| *at);
    for i in 1..steps.len() {
        let close = steps[i].0 - steps[i - 1].0 <= 60;
        let both = matches!(steps[i].1, Step::Deliver { .. });
        if close
            && both
            && rng.chance(0.3)
            && let Step::Deliver { with_next, .. } = &mut steps[i - 1].1
        {
            *with_next = true;
        }
    }
    steps
}

/// Delivers `event` as Stripe does: signed now, and sent again after a 5xx (the service
/// answers 503 while its database is busy; Stripe retries those for days). The answer is the
/// first that is not a 5xx, or the last.
pub async fn deliver(client: &reqwest::Client, address: &str, event: &Value) -> (u16, Value) {
    let mut attempt = 0;
    loop {
        let (status, answer) = deliver_once(client, address, event).await;
        if status < 500 || attempt == 20 {
            return (status, answer);
        }
        attempt += 1;
        tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
    }
}

/// Signs `event` as Stripe does (now, with the endpoint's secret) and posts it once.
async fn deliver_once(client: &reqwest::Client, address: &str, event: &Value) -> (u16, Value) {
    let body = event.to_string();
    let header = api::stripe::signature::sign(
        body.as_bytes(),
        crate::helpers::SECRET,
        chrono::Utc::now().timestamp(),
    );
    let response = client
        .post(format!("{address}/webhooks/stripe"))
        .header("content-type", "application/json")
        .header("stripe-signature", header)
        .body(body)
        .send()
        .await
        .expect("deliver to the API");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// libfaketime, which sets the clock `stripe-sync` reads (Debian's `faketime` package).
fn faketime_library() -> String {
    if let Ok(path) = std::env::var("FAKETIME_LIB") {
        return path;
    }
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ];
    candidates
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| (*p).to_owned())
        .unwrap_or_else(|| {
            panic!(
                "libfaketime not found (tried {candidates:?}): install Debian's `faketime` \
                 package (.ci/run does), or set FAKETIME_LIB"
            )
        })
}

pub struct SyncRun {
    pub success: bool,
    pub output: String,
}

/// `billing stripe-sync` as an operator runs it, on a host whose clock reads `host_clock`.
/// `pro_list`: the history's `PRO_PRICE_IDS`, if it runs with one.
pub async fn stripe_sync(
    database_url: &str,
    api_base: &str,
    host_clock: i64,
    pro_list: Option<&str>,
) -> SyncRun {
    let clock = chrono::DateTime::from_timestamp(host_clock, 0)
        .map(|t| t.format("@%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default();
    let mut command = Command::new(env!("CARGO_BIN_EXE_billing"));
    command
        .arg("stripe-sync")
        .env("DATABASE_URL", database_url)
        .env("STRIPE_API_BASE", api_base)
        .env("STRIPE_API_KEY", super::fake_api::KEY)
        .env("STRIPE_MAX_REQUESTS_PER_SEC", "1000")
        .env("PRO_PRICE_IDS", pro_list.unwrap_or(""))
        // The harness migrated the database; a nightly run on a deployed one would say the
        // same. `check` still refuses a schema with a migration pending, and saves the
        // migrator's own pool and lock on every run (docs/stripe-model.md, "Time").
        .env("MIGRATE", "check")
        .env("RUST_LOG", "warn")
        .env("TZ", "UTC")
        .env("LD_PRELOAD", faketime_library())
        .env("FAKETIME", clock)
        // Timers and timeouts keep the real monotonic clock.
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run billing stripe-sync");
    SyncRun {
        success: output.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}
