//! Webhook throughput: signed `customer.subscription.updated` deliveries for random customers
//! among `--users` (each linked to a Stripe customer), from several concurrent senders,
//! against the real API served in-process on PostgreSQL.
//!
//! With `--past-events N` it runs twice in one process: first with fresh customers, then
//! after giving every customer N past events, so the two rates show whether one delivery's
//! cost grows with a customer's history. The run fails if the second rate is more than 20%
//! below the first.

use std::time::{Duration, Instant};

use chrono::Utc;
use migration::{Migrator, MigratorTrait};
use sea_orm::ConnectionTrait;
use serde_json::json;

use crate::load::{self, Bench, Common, Fill};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Concurrent senders.
    #[arg(long, default_value_t = 8)]
    pub senders: usize,
    /// Seconds of sending (per phase).
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Past events per customer for a second phase (0: one phase, fresh customers only).
    #[arg(long, default_value_t = 0)]
    pub past_events: i64,
}

const SECRET: &str = "whsec_bench";
const STATUSES: [&str; 4] = ["active", "past_due", "active", "trialing"];

pub async fn run(args: Args) -> Result<(), String> {
    let common = &args.common;
    let bench = Bench::create(common).await?;
    Migrator::up(&bench.db, None)
        .await
        .map_err(|e| e.to_string())?;
    let fill = Fill {
        customer_ids: true,
        ..Fill::default()
    };
    load::populate(&bench.db, common.users, 0, fill).await?;
    // m010 ran on the empty table; link the customers as its backfill would have.
    bench
        .db
        .execute_unprepared(
            "INSERT INTO stripe_customers (customer_id, user_id) \
             SELECT stripe_customer_id, id FROM users WHERE stripe_customer_id IS NOT NULL",
        )
        .await
        .map_err(|e| e.to_string())?;

    let settings = api::Settings {
        bind: "127.0.0.1:0".to_owned(),
        database_url: Some(bench.url.as_str().into()),
        database_schema: None,
        db_max_connections: 16,
        db_lock_timeout_ms: 2000,
        request_timeout_secs: 30,
        limits: api::Limits::default(),
        stripe: api::settings::StripeSettings {
            webhook_secrets: api::stripe::signature::WebhookSecrets::parse(SECRET)
                .map_err(|e| e.to_string())?,
            webhook_tolerance_secs: 300,
        },
        purge_every_secs: 0,
        migrate: api::settings::MigrateMode::OnStart,
    };
    let app = api::Application::build(&settings)
        .await
        .map_err(|e| e.to_string())?;
    let url = format!(
        "http://{}/webhooks/stripe",
        app.local_addr().map_err(|e| e.to_string())?
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    let fresh = phase(&client, &url, &args, "fresh").await?;
    let mut result = check_errors(fresh.errors);
    if args.past_events > 0 {
        let started = Instant::now();
        add_history(&bench.db, args.past_events).await?;
        println!(
            "gave each of {} customers {} past events in {:.1} s",
            common.users,
            args.past_events,
            started.elapsed().as_secs_f64()
        );
        let history = phase(&client, &url, &args, "history").await?;
        let ratio = history.rate / fresh.rate;
        println!(
            "with {} past events per customer: {:.0} deliveries/s, {:.0}% of the fresh-customer {:.0}",
            args.past_events,
            history.rate,
            ratio * 100.0,
            fresh.rate
        );
        result = result.and(check_errors(history.errors));
        if result.is_ok() && ratio < 0.8 {
            result = Err(format!(
                "deliveries with history ran at {:.0}% of the fresh-customer rate (floor: 80%)",
                ratio * 100.0
            ));
        }
    }
    let _ = stop.send(());
    let _ = server.await;
    bench.drop_database().await;
    result
}

fn check_errors(errors: u64) -> Result<(), String> {
    if errors > 0 {
        return Err(format!("{errors} deliveries were not answered 200"));
    }
    Ok(())
}

/// `past` stored events per customer, spread over the past years, as months of renewals
/// would leave them.
async fn add_history(db: &sea_orm::DatabaseConnection, past: i64) -> Result<(), String> {
    db.execute_unprepared(&format!(
        "INSERT INTO stripe_events (id, event_type, created, customer_id, subscription_id, status, \
         current_period_end) \
         SELECT 'evt_past_' || u.id || '_' || g, 'customer.subscription.updated', \
         extract(epoch FROM now())::bigint - 86400 * 365 * 5 + g * 60, u.stripe_customer_id, \
         'sub_' || u.id, 'active', now() - interval '5 years' + g * interval '1 minute' \
         FROM users u CROSS JOIN generate_series(1, {past}) g \
         WHERE u.stripe_customer_id IS NOT NULL"
    ))
    .await
    .map_err(|e| e.to_string())?;
    db.execute_unprepared("ANALYZE stripe_events")
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

struct Phase {
    rate: f64,
    errors: u64,
}

/// `args.senders` senders posting for `args.duration` seconds; prints and returns the rate.
async fn phase(
    client: &reqwest::Client,
    url: &str,
    args: &Args,
    name: &'static str,
) -> Result<Phase, String> {
    let users = args.common.users;
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let senders: Vec<_> = (0..args.senders)
        .map(|sender| {
            let (client, url) = (client.clone(), url.to_owned());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let mut user = 1 + (sender as i64 * 7919) % users;
                let mut n = 0usize;
                while Instant::now() < deadline {
                    user = 1 + (user * 48271 + 11) % users;
                    n += 1;
                    let now = Utc::now().timestamp();
                    let body = json!({
                        "id": format!("evt_bench_{name}_{sender}_{n}"), "object": "event",
                        "type": "customer.subscription.updated", "created": now,
                        "data": {"object": {
                            "id": format!("sub_{user}"), "object": "subscription",
                            "customer": format!("cus_{user}"), "status": STATUSES[n % STATUSES.len()],
                            "items": {"data": [{"current_period_end": now + 30 * 86_400}]}
                        }}
                    })
                    .to_string();
                    let signature = api::stripe::signature::sign(body.as_bytes(), SECRET, now);
                    let started = Instant::now();
                    let response = client
                        .post(&url)
                        .header("stripe-signature", signature)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    latencies.push(started.elapsed());
                    if !matches!(&response, Ok(r) if r.status().as_u16() == 200) {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for sender in senders {
        let (l, e) = sender.await.map_err(|e| e.to_string())?;
        latencies.extend(l);
        errors += e;
    }
    let rate = latencies.len() as f64 / args.duration as f64;
    println!(
        "\n{name}: {} deliveries from {} senders in {}s: {rate:.0} deliveries/s; latency p50/p99/max {} ms; {errors} non-200",
        latencies.len(),
        args.senders,
        args.duration,
        load::percentiles(&latencies)
    );
    Ok(Phase { rate, errors })
}
