//! Webhook throughput: signed `customer.subscription.updated` deliveries for random customers
//! among `--users` (each linked to a Stripe customer), from several concurrent senders,
//! against the real API served in-process on PostgreSQL.

use std::time::{Duration, Instant};

use chrono::Utc;
use migration::{Migrator, MigratorTrait};
use serde_json::json;

use crate::load::{self, Bench, Common, Fill};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Concurrent senders.
    #[arg(long, default_value_t = 8)]
    pub senders: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
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

    let settings = api::Settings {
        bind: "127.0.0.1:0".to_owned(),
        database_url: Some(bench.url.clone()),
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
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let senders: Vec<_> = (0..args.senders)
        .map(|sender| {
            let (client, url, users) = (client.clone(), url.clone(), common.users);
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
                        "id": format!("evt_bench_{sender}_{n}"), "object": "event",
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
    let _ = stop.send(());
    let _ = server.await;
    println!(
        "\n{} deliveries from {} senders in {}s: {:.0} deliveries/s; latency p50/p99/max {} ms; {errors} non-200",
        latencies.len(),
        args.senders,
        args.duration,
        latencies.len() as f64 / args.duration as f64,
        load::percentiles(&latencies)
    );
    bench.drop_database().await;
    if errors > 0 {
        return Err(format!("{errors} deliveries were not answered 200"));
    }
    Ok(())
}
