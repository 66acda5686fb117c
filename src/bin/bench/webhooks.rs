//! Webhook throughput against its floor: signed `customer.subscription.updated` deliveries
//! for customers among `--users` (each linked to a Stripe customer), from `--senders`
//! concurrent clients, in three phases of one run:
//!
//! 1. `sql`: the statements one delivery executes, captured from the API's own code (a probe
//!    delivery on a connection that records every statement), replayed as plain statements
//!    with each delivery's ids, in one transaction per delivery: no HTTP, JSON or HMAC;
//! 2. `service`: the API's delivery code called directly (JSON parse and the ORM, no HTTP or
//!    HMAC), which splits the gap between 1 and 3 into the ORM's part and HTTP's part;
//! 3. `http`: signed deliveries to the real API served in-process.
//!
//! It prints each rate, latency and CPU use, and the ratio http ÷ sql. Each delivery is for a
//! customer no other delivery of the run has used, so every phase takes the same path (a new
//! subscription). With `--past-events N` a fourth phase re-sends to customers that each have
//! N past events; it fails if that rate is more than 20% below phase 3.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use migration::{Migrator, MigratorTrait};
use plotters::style::RGBColor;
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement, Value};
use serde_json::json;

use crate::about::About;
use crate::chart::{self, Series, Span};
use crate::cpu::Cpu;
use crate::load::{self, Bench, Common, Fill, Sample};
use crate::replay::{self, Recorder, Shape};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Concurrent senders (and concurrent clients of the SQL-only and service phases).
    #[arg(long, default_value_t = 8)]
    pub senders: usize,
    /// Seconds of each phase.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Past events per customer for a last phase (0: no such phase).
    #[arg(long, default_value_t = 0)]
    pub past_events: i64,
    /// Where to write the SVG chart.
    #[arg(long, default_value = "bench-webhooks.svg")]
    pub chart: PathBuf,
}

const SECRET: &str = "whsec_bench";
const POOL: u32 = 16;

/// The ids one delivery is about; what the replayed statements substitute.
#[derive(Clone)]
struct Ids {
    event: String,
    customer: String,
    subscription: String,
    user: i64,
}

impl Ids {
    fn new(phase: &str, index: i64, users: i64) -> Self {
        // 7919 is prime, so for any --users it does not divide, consecutive indexes visit
        // every user once before any repeats.
        let user = 1 + (index * 7919) % users;
        Self {
            event: format!("evt_bench_{phase}_{index}"),
            customer: format!("cus_{user}"),
            subscription: format!("sub_{user}"),
            user,
        }
    }

    fn body(&self, created: i64, status: &str) -> String {
        json!({
            "id": self.event, "object": "event",
            "type": "customer.subscription.updated", "created": created,
            "data": {"object": {
                "id": self.subscription, "object": "subscription",
                "customer": self.customer, "status": status,
                "items": {"data": [{"current_period_end": created + 30 * 86_400}]}
            }}
        })
        .to_string()
    }
}

pub async fn run(args: Args) -> Result<(), String> {
    let common = &args.common;
    let bench = Bench::create(common).await?;
    let about = About::read(&bench.db).await;
    about.print();
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
    let result = phases(&args, &bench, &about).await;
    bench.drop_database().await;
    result
}

async fn phases(args: &Args, bench: &Bench, about: &About) -> Result<(), String> {
    let next = Arc::new(AtomicI64::new(0));
    let (template, captured_from) = capture(&bench.url, &next, args.common.users).await?;
    println!(
        "\none delivery executes {} statements (captured from the API's code):",
        template.len()
    );
    replay::describe(&template);

    let settings = api::Settings {
        bind: "127.0.0.1:0".to_owned(),
        database_url: Some(bench.url.clone()),
        database_schema: None,
        db_max_connections: POOL,
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
    let sender = Sender {
        args,
        next: next.clone(),
        client: client.clone(),
        url: url.clone(),
    };

    let outcome = async {
        let warm = Duration::from_secs(2.min(args.duration));
        sender.phase(Kind::Http, "warm-up", warm).await?;
        let own = load::connect(&bench.url, POOL).await?;
        let span = Duration::from_secs(args.duration);
        let sql = sender
            .phase(
                Kind::Sql {
                    db: own.clone(),
                    template: template.clone(),
                    from: captured_from.clone(),
                },
                "sql",
                span,
            )
            .await?;
        let service = sender
            .phase(Kind::Service { db: own.clone() }, "service", span)
            .await?;
        let http = sender.phase(Kind::Http, "http", span).await?;
        let _ = own.close().await;
        println!(
            "\nhttp ÷ sql = {:.2} ({:.0} ÷ {:.0} deliveries/s); service ÷ sql = {:.2}; http ÷ service = {:.2}",
            http.rate / sql.rate,
            http.rate,
            sql.rate,
            service.rate / sql.rate,
            http.rate / service.rate
        );
        sign_cost(args.common.users);
        chart::throughput_timeline(
            &args.chart,
            &format!(
                "Webhook deliveries, {} clients: http {:.0}/s = {:.2} × the SQL alone ({:.0}/s)",
                args.senders,
                http.rate,
                http.rate / sql.rate,
                sql.rate
            ),
            &about.lines(),
            &[
                Series {
                    name: "sql only",
                    samples: &sql.samples,
                    color: RGBColor(0, 140, 0),
                },
                Series {
                    name: "service (ORM, no HTTP)",
                    samples: &service.samples,
                    color: RGBColor(30, 60, 200),
                },
                Series {
                    name: "http",
                    samples: &http.samples,
                    color: RGBColor(200, 30, 30),
                },
            ],
            &[
                Span {
                    label: "sql only",
                    from: sql.started,
                    to: sql.ended,
                },
                Span {
                    label: "service",
                    from: service.started,
                    to: service.ended,
                },
                Span {
                    label: "http",
                    from: http.started,
                    to: http.ended,
                },
            ],
        )?;
        println!("chart: {}", args.chart.display());
        let mut result = check_errors(&[&sql, &service, &http]);
        if args.past_events > 0 {
            let started = Instant::now();
            add_history(&bench.db, args.past_events).await?;
            println!(
                "gave each of {} customers {} past events in {:.1} s",
                args.common.users,
                args.past_events,
                started.elapsed().as_secs_f64()
            );
            let history = sender.phase(Kind::Http, "history", span).await?;
            let ratio = history.rate / http.rate;
            println!(
                "with {} past events per customer: {:.0} deliveries/s, {:.0}% of the http phase's {:.0}",
                args.past_events,
                history.rate,
                ratio * 100.0,
                http.rate
            );
            result = result.and(check_errors(&[&history]));
            if result.is_ok() && ratio < 0.8 {
                result = Err(format!(
                    "deliveries with history ran at {:.0}% of the http phase's rate (floor: 80%)",
                    ratio * 100.0
                ));
            }
        }
        result
    }
    .await;
    let _ = stop.send(());
    let _ = server.await;
    outcome
}

fn check_errors(phases: &[&Phase]) -> Result<(), String> {
    let errors: u64 = phases.iter().map(|p| p.errors).sum();
    if errors > 0 {
        return Err(format!("{errors} deliveries failed (non-200 or SQL error)"));
    }
    Ok(())
}

/// Runs one delivery through the API's code on a connection that records every statement,
/// and returns those statements with the ids they were recorded for.
async fn capture(url: &str, next: &AtomicI64, users: i64) -> Result<(Vec<Statement>, Ids), String> {
    let probe = Recorder::open(url, 1).await?;
    let ids = Ids::new("probe", next.fetch_add(1, Ordering::Relaxed), users);
    let event = api::stripe::event::parse(ids.body(Utc::now().timestamp(), "active").as_bytes())
        .map_err(|e| e.to_string())?;
    api::service::stripe_sync::process(&probe.db, &event)
        .await
        .map_err(|e| format!("the probe delivery failed: {e:?}"))?;
    let statements = probe.take();
    let _ = probe.db.close().await;
    if statements.is_empty() {
        return Err("the probe delivery executed no statement".to_owned());
    }
    Ok((statements, ids))
}

/// `template` recorded for `from`, with the ids of `to`.
fn substitute(template: &[Statement], from: &Ids, to: &Ids) -> Vec<Statement> {
    let text = |s: &String| Value::String(Some(s.clone()));
    replay::substitute(
        template,
        &[
            (text(&from.event), text(&to.event)),
            (text(&from.customer), text(&to.customer)),
            (text(&from.subscription), text(&to.subscription)),
            (Value::BigInt(Some(from.user)), Value::BigInt(Some(to.user))),
        ],
    )
}

/// One delivery's transaction: read committed, set inside it, as the API opens its own.
const DELIVERY: Shape = Shape {
    outside: 0,
    transaction: Some(Some(sea_orm::IsolationLevel::ReadCommitted)),
};

enum Kind {
    Sql {
        db: DatabaseConnection,
        template: Vec<Statement>,
        from: Ids,
    },
    Service {
        db: DatabaseConnection,
    },
    Http,
}

struct Sender<'a> {
    args: &'a Args,
    next: Arc<AtomicI64>,
    client: reqwest::Client,
    url: String,
}

struct Phase {
    rate: f64,
    errors: u64,
    samples: Vec<Sample>,
    started: f64,
    ended: f64,
}

const STATUSES: [&str; 4] = ["active", "past_due", "active", "trialing"];

impl Sender<'_> {
    /// `args.senders` concurrent clients delivering for `span`; prints and returns the rate.
    async fn phase(&self, kind: Kind, name: &'static str, span: Duration) -> Result<Phase, String> {
        let users = self.args.common.users;
        let kind = Arc::new(kind);
        let cpu = Cpu::read();
        let started = load::now();
        let deadline = Instant::now() + span;
        let clients: Vec<_> = (0..self.args.senders)
            .map(|_| {
                let (kind, next) = (kind.clone(), self.next.clone());
                let (client, url) = (self.client.clone(), self.url.clone());
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    let mut errors = 0u64;
                    while Instant::now() < deadline {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let ids = Ids::new(name, index, users);
                        let status = STATUSES[(index % 4) as usize];
                        let at = load::now();
                        let began = Instant::now();
                        let ok = deliver(&kind, &client, &url, &ids, status).await;
                        samples.push(Sample {
                            at,
                            latency: began.elapsed(),
                        });
                        if !ok {
                            errors += 1;
                        }
                    }
                    (samples, errors)
                })
            })
            .collect();
        let mut samples = Vec::new();
        let mut errors = 0;
        for client in clients {
            let (s, e) = client.await.map_err(|e| e.to_string())?;
            samples.extend(s);
            errors += e;
        }
        let ended = load::now();
        let used = cpu.since();
        let rate = samples.len() as f64 / (ended - started);
        println!(
            "\n{name:<8} {:>7} deliveries, {} clients, {:.1} s: {rate:>6.0}/s; p50/p99/max {} ms; \
             {errors} failed; machine CPU {:.0}% busy, this process {:.2} ms CPU per delivery",
            samples.len(),
            self.args.senders,
            ended - started,
            load::percentiles(&load::latencies(&samples)),
            used.machine_busy * 100.0,
            used.process_seconds * 1e3 / samples.len().max(1) as f64,
        );
        Ok(Phase {
            rate,
            errors,
            samples,
            started,
            ended,
        })
    }
}

/// One delivery by `kind`'s route; false when it failed.
async fn deliver(
    kind: &Kind,
    client: &reqwest::Client,
    url: &str,
    ids: &Ids,
    status: &str,
) -> bool {
    let now = Utc::now().timestamp();
    match kind {
        Kind::Http => {
            let body = ids.body(now, status);
            let signature = api::stripe::signature::sign(body.as_bytes(), SECRET, now);
            let response = client
                .post(url)
                .header("stripe-signature", signature)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await;
            matches!(&response, Ok(r) if r.status().as_u16() == 200)
        }
        Kind::Service { db } => {
            let Ok(event) = api::stripe::event::parse(ids.body(now, status).as_bytes()) else {
                return false;
            };
            api::service::stripe_sync::process(db, &event).await.is_ok()
        }
        Kind::Sql { db, template, from } => {
            replay::replay(db, &substitute(template, from, ids), DELIVERY)
                .await
                .is_ok()
        }
    }
}

/// What the sender's JSON and HMAC, and the server's parse and verification, cost one core.
fn sign_cost(users: i64) {
    let rounds = 20_000;
    let started = Instant::now();
    for i in 0..rounds {
        let ids = Ids::new("cost", i, users);
        let now = Utc::now().timestamp();
        let body = ids.body(now, "active");
        let header = api::stripe::signature::sign(body.as_bytes(), SECRET, now);
        let _ = api::stripe::signature::verify(
            Some(&header),
            body.as_bytes(),
            &[SECRET.to_owned()],
            Duration::from_secs(300),
            now,
        );
        let _ = api::stripe::event::parse(body.as_bytes());
    }
    println!(
        "build + sign + verify + parse one event: {:.1} µs on one core",
        started.elapsed().as_secs_f64() * 1e6 / rounds as f64
    );
}

/// `past` stored events per customer, spread over the past years, as months of renewals
/// would leave them.
async fn add_history(db: &DatabaseConnection, past: i64) -> Result<(), String> {
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
