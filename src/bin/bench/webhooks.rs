//! Webhook throughput against its floor: signed `customer.subscription.updated` deliveries
//! for customers among `--users` (each linked to a Stripe customer), from `--senders`
//! concurrent clients, in four kinds of phase, interleaved over `--rounds` rounds so that the
//! machine's drift falls on all of them alike:
//!
//! 1. `sql`: the statements one delivery executes, recorded from the API itself (one signed
//!    probe delivery to the API's router served on a connection that records every
//!    statement), replayed as plain statements with each delivery's ids, in one transaction
//!    per delivery as the API opens it; no HTTP, JSON, HMAC or pool ping: the floor;
//! 2. `service, no ping`: the API's delivery code called directly (JSON parse and the ORM);
//! 3. `service`: the same on a pool that pings each connection it hands out, as the API's
//!    pool does (SeaORM's default);
//! 4. `http`: signed deliveries to the real API (`api::Application`) served in-process;
//! 5. `http, router on plain axum::serve`: the same router and state on the API's own pool,
//!    served by `axum::serve` with TCP_NODELAY: what is left of the HTTP cost once
//!    `Application`'s own serving is taken out;
//! 6. `sql, fewest statements`: the second floor, the fewest statements a correct delivery
//!    needs, written by hand (`fewest_statements`), on the same pool as the first. Before the
//!    phases one probe delivery through it must leave the same billing columns and snapshot
//!    as the API's probe did, or the run stops.
//!
//! It prints each rate, latency and CPU use, and the ratios. Each delivery is for a customer
//! no other delivery of the run has used, so every phase takes the same path (a new
//! subscription). With `--past-events N` a last phase re-sends to customers that each have N
//! past events; it fails if that rate is more than 20% below the http phases'.

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
use crate::fewest_statements;
use crate::load::{self, Bench, Common, Fill, Sample};
use crate::replay::{self, ApiServer, POOL, RecordingServer, Shape};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    /// Concurrent senders (and concurrent clients of the SQL-only and service phases).
    #[arg(long, default_value_t = 8)]
    pub senders: usize,
    /// Seconds of each kind of phase, over all rounds.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Rounds: each kind of phase runs once per round for --duration ÷ --rounds seconds.
    #[arg(long, default_value_t = 4)]
    pub rounds: u64,
    /// Past events per customer for a last phase (0: no such phase).
    #[arg(long, default_value_t = 0)]
    pub past_events: i64,
    /// Where to write the SVG chart.
    #[arg(long, default_value = "bench-webhooks.svg")]
    pub chart: PathBuf,
}

const SECRET: &str = "whsec_benchSigningSecret0123456789abcdef";

/// A delivery's period: its end is this many seconds after the event.
const PERIOD: i64 = 30 * 86_400;

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

    /// The delivery `body` describes, as the fewest-statements floor takes it.
    fn delivery<'a>(&'a self, created: i64, status: &'a str) -> fewest_statements::Delivery<'a> {
        fewest_statements::Delivery {
            event: &self.event,
            created,
            customer: &self.customer,
            subscription: &self.subscription,
            status,
            period_end: created + PERIOD,
        }
    }

    fn body(&self, created: i64, status: &str) -> String {
        json!({
            "id": self.event, "object": "event",
            "type": "customer.subscription.updated", "created": created, "livemode": false,
            "data": {"object": {
                "id": self.subscription, "object": "subscription",
                "customer": self.customer, "status": status,
                "items": {"data": [{"current_period_end": created + PERIOD}]}
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
    // m010 ran on the empty table; link the customers as its backfill would have. Then
    // ANALYZE: a connection that prepares a delivery's statements while the planner still
    // believes stripe_customers empty keeps a plan that scans its million rows (measured:
    // latency climbing to a second within a minute, on the pools used first).
    load::execute_all(
        &bench.db,
        &[
            "INSERT INTO stripe_customers (customer_id, user_id) \
         SELECT stripe_customer_id, id FROM users WHERE stripe_customer_id IS NOT NULL",
            "ANALYZE stripe_customers",
        ],
    )
    .await?;
    let result = phases(&args, &bench, &about).await;
    bench.drop_database().await;
    result
}

fn settings(url: &str) -> Result<api::Settings, String> {
    let secrets =
        api::stripe::signature::WebhookSecrets::parse(SECRET).map_err(|e| e.to_string())?;
    Ok(replay::api_settings(url, secrets))
}

/// Every phase of one kind, across the rounds.
#[derive(Default)]
struct Tally {
    deliveries: Vec<Sample>,
    seconds: f64,
    errors: u64,
    cpu_machine: f64,
    cpu_process: f64,
    connections: i64,
}

impl Tally {
    fn add(&mut self, phase: Phase) {
        self.seconds += phase.ended - phase.started;
        self.errors += phase.errors;
        self.cpu_machine += phase.used.machine_busy * (phase.ended - phase.started);
        self.cpu_process += phase.used.process_seconds;
        self.connections += phase.connections;
        self.deliveries.extend(phase.samples);
    }

    fn rate(&self) -> f64 {
        self.deliveries.len() as f64 / self.seconds.max(1e-9)
    }

    fn print(&self, name: &str, senders: usize) {
        println!(
            "{name:<17} {:>7} deliveries, {senders} clients, {:>5.1} s: {:>6.0}/s; p50/p99/max {} ms; \
             {} failed; machine CPU {:.0}% busy; this process {:.2} ms CPU per delivery; \
             {} new database connections",
            self.deliveries.len(),
            self.seconds,
            self.rate(),
            load::percentiles(&load::latencies(&self.deliveries)),
            self.errors,
            self.cpu_machine / self.seconds.max(1e-9) * 100.0,
            self.cpu_process * 1e3 / self.deliveries.len().max(1) as f64,
            self.connections,
        );
    }
}

const KINDS: [&str; 6] = [
    "sql",
    "service, no ping",
    "service",
    "http",
    "http, router on plain axum::serve",
    "sql, fewest statements",
];

async fn phases(args: &Args, bench: &Bench, about: &About) -> Result<(), String> {
    let next = Arc::new(AtomicI64::new(0));
    let settings = settings(&bench.url)?;
    let client = reqwest::Client::new();
    let (template, captured_from) =
        capture(&bench.url, &settings, &client, &next, args.common.users).await?;
    println!(
        "\none delivery executes {} statements (recorded from the API over HTTP), in one transaction:",
        template.len()
    );
    replay::describe(&template);

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
    let sender = Sender {
        args,
        next: next.clone(),
        client: client.clone(),
        stats: bench.db.clone(),
    };

    let outcome = async {
        let bare = load::connect_with(&bench.url, POOL, false).await?;
        let pinged = load::connect_with(&bench.url, POOL, true).await?;
        let (api_pool, _) = api::startup::open_database(&settings)
            .await
            .map_err(|e| e.to_string())?;
        let nodelay = ApiServer::start(api_pool, &settings, true)
        .await?;
        let nodelay_url = format!("{}/webhooks/stripe", nodelay.base);
        let kind = |i: usize| match i {
            0 => Kind::Sql {
                db: bare.clone(),
                template: template.clone(),
                from: captured_from.clone(),
            },
            1 => Kind::Service { db: api::db::Db::direct(bare.clone()) },
            2 => Kind::Service { db: api::db::Db::direct(pinged.clone()) },
            3 => Kind::Http(url.clone()),
            4 => Kind::Http(nodelay_url.clone()),
            _ => Kind::Fewest { db: bare.clone() },
        };
        same_writes_as_the_api(&bare, &captured_from, &next, args.common.users).await?;
        sender
            .phase(Kind::Http(url.clone()), Duration::from_secs(2.min(args.duration)))
            .await?;
        let rounds = args.rounds.max(1);
        let span = Duration::from_secs_f64(args.duration as f64 / rounds as f64);
        let mut tallies: [Tally; 6] = Default::default();
        let mut spans = Vec::new();
        for round in 0..rounds {
            for (i, tally) in tallies.iter_mut().enumerate() {
                let phase = sender.phase(kind(i), span).await?;
                spans.push(Span {
                    label: if round == 0 { KINDS[i] } else { "" },
                    from: phase.started,
                    to: phase.ended,
                });
                tally.add(phase);
            }
        }
        let _ = bare.close().await;
        let _ = pinged.close().await;
        nodelay.stop();
        println!(
            "\n{} rounds of {:.1} s per kind, interleaved:",
            rounds,
            span.as_secs_f64()
        );
        for (name, tally) in KINDS.iter().zip(&tallies) {
            tally.print(name, args.senders);
        }
        let [sql, bare_service, service, http, http_nodelay, fewest] = &tallies;
        println!(
            "\nhttp ÷ sql = {:.2} ({:.0} ÷ {:.0} deliveries/s). Of the gap: service (no ping) ÷ sql \
             = {:.2}; the pool's ping: service ÷ service (no ping) = {:.2}; HTTP, JSON and HMAC: \
             http ÷ service = {:.2}; the API's router served by plain axum::serve (TCP_NODELAY), \
             not api::Application: {:.2} × http",
            http.rate() / sql.rate(),
            http.rate(),
            sql.rate(),
            bare_service.rate() / sql.rate(),
            service.rate() / bare_service.rate(),
            http.rate() / service.rate(),
            http_nodelay.rate() / http.rate(),
        );
        println!(
            "against the second floor, {} statements written by hand ({:.0} deliveries/s): \
             sql (the API's {} recorded statements) ÷ fewest = {:.2}; http ÷ fewest = {:.2}",
            fewest_statements::STATEMENTS,
            fewest.rate(),
            template.len(),
            sql.rate() / fewest.rate(),
            http.rate() / fewest.rate(),
        );
        sign_cost(args.common.users);
        let colors = [
            chart::INK_GREEN,
            RGBColor(160, 100, 0),
            chart::INK_GREY,
            chart::INK_BLUE,
            chart::INK_RED,
            RGBColor(120, 60, 160),
        ];
        let series: Vec<Series<'_>> = KINDS
            .iter()
            .zip(&tallies)
            .zip(colors)
            .map(|((name, tally), color)| Series {
                name,
                samples: &tally.deliveries,
                color,
            })
            .collect();
        chart::throughput_timeline(
            &args.chart,
            &format!(
                "Webhook deliveries, {} clients: http {:.0}/s = {:.2} × the SQL alone ({:.0}/s)",
                args.senders,
                http.rate(),
                http.rate() / sql.rate(),
                sql.rate()
            ),
            &about.lines(),
            &series,
            &spans,
        )?;
        println!("chart: {}", args.chart.display());
        let mut result = check_errors(&tallies);
        if args.past_events > 0 {
            let started = Instant::now();
            add_history(&bench.db, args.past_events).await?;
            println!(
                "gave each of {} customers {} past events in {:.1} s",
                args.common.users,
                args.past_events,
                started.elapsed().as_secs_f64()
            );
            let mut history = Tally::default();
            history.add(
                sender
                    .phase(Kind::Http(url.clone()), span * rounds as u32)
                    .await?,
            );
            history.print("history", args.senders);
            let ratio = history.rate() / http.rate();
            println!(
                "with {} past events per customer: {:.0} deliveries/s, {:.0}% of the http phases' {:.0}",
                args.past_events,
                history.rate(),
                ratio * 100.0,
                http.rate()
            );
            result = result.and(check_errors(std::slice::from_ref(&history)));
            if result.is_ok() && ratio < 0.8 {
                result = Err(format!(
                    "deliveries with history ran at {:.0}% of the http phases' rate (floor: 80%)",
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

fn check_errors(tallies: &[Tally]) -> Result<(), String> {
    let errors: u64 = tallies.iter().map(|t| t.errors).sum();
    if errors > 0 {
        return Err(format!("{errors} deliveries failed (non-200 or SQL error)"));
    }
    Ok(())
}

/// Sends one signed delivery to the API's router served on a recording connection; returns
/// the statements it executed and the ids they were recorded for.
async fn capture(
    url: &str,
    settings: &api::Settings,
    client: &reqwest::Client,
    next: &AtomicI64,
    users: i64,
) -> Result<(Vec<Statement>, Ids), String> {
    let server = RecordingServer::start(url, settings).await?;
    let ids = Ids::new("probe", next.fetch_add(1, Ordering::Relaxed), users);
    let delivered = post(
        client,
        &format!("{}/webhooks/stripe", server.base),
        &ids,
        "active",
    )
    .await;
    let statements = server.recorder.take();
    server.stop().await;
    if !delivered {
        return Err("the probe delivery was not answered 200".to_owned());
    }
    if statements.is_empty() {
        return Err("the probe delivery executed no statement".to_owned());
    }
    Ok((statements, ids))
}

/// One signed delivery; true when answered 200.
async fn post(client: &reqwest::Client, url: &str, ids: &Ids, status: &str) -> bool {
    let now = Utc::now().timestamp();
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
        db: api::db::Db,
    },
    /// Signed deliveries to this URL.
    Http(String),
    /// The second floor's hand-written statements.
    Fewest {
        db: DatabaseConnection,
    },
}

struct Sender<'a> {
    args: &'a Args,
    next: Arc<AtomicI64>,
    client: reqwest::Client,
    /// Reads the server's count of sessions opened in the database.
    stats: DatabaseConnection,
}

/// How many sessions (connections) the server has opened in this database so far.
async fn sessions_opened(db: &DatabaseConnection) -> i64 {
    db.query_one_raw(Statement::from_string(
        sea_orm::DbBackend::Postgres,
        "SELECT sessions FROM pg_stat_database WHERE datname = current_database()",
    ))
    .await
    .ok()
    .flatten()
    .and_then(|row| row.try_get_by_index::<i64>(0).ok())
    .unwrap_or(0)
}

struct Phase {
    errors: u64,
    samples: Vec<Sample>,
    started: f64,
    ended: f64,
    used: crate::cpu::Used,
    /// Sessions the server opened in the database meanwhile (connections made).
    connections: i64,
}

const STATUSES: [&str; 4] = ["active", "past_due", "active", "trialing"];

impl Sender<'_> {
    /// `args.senders` concurrent clients delivering for `span`.
    async fn phase(&self, kind: Kind, span: Duration) -> Result<Phase, String> {
        let users = self.args.common.users;
        let kind = Arc::new(kind);
        let sessions = sessions_opened(&self.stats).await;
        let cpu = Cpu::read();
        let started = load::now();
        let deadline = Instant::now() + span;
        let clients: Vec<_> = (0..self.args.senders)
            .map(|_| {
                let (kind, next) = (kind.clone(), self.next.clone());
                let client = self.client.clone();
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    let mut errors = 0u64;
                    while Instant::now() < deadline {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let ids = Ids::new("bench", index, users);
                        let status = STATUSES[(index % 4) as usize];
                        let at = load::now();
                        let began = Instant::now();
                        let ok = deliver(&kind, &client, &ids, status).await;
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
        // The server counts a session once its statistics are flushed (about every second).
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let connections = sessions_opened(&self.stats).await - sessions;
        Ok(Phase {
            errors,
            samples,
            started,
            ended,
            used,
            connections,
        })
    }
}

/// One delivery by `kind`'s route; false when it failed.
async fn deliver(kind: &Kind, client: &reqwest::Client, ids: &Ids, status: &str) -> bool {
    let now = Utc::now().timestamp();
    match kind {
        Kind::Http(url) => post(client, url, ids, status).await,
        Kind::Service { db } => {
            let Ok(event) =
                api::stripe::event::parse(ids.body(now, status).as_bytes(), &Default::default())
            else {
                return false;
            };
            api::service::stripe_sync::process(db, &event).await.is_ok()
        }
        Kind::Fewest { db } => {
            let delivery = ids.delivery(now, status);
            matches!(
                fewest_statements::deliver(db, &delivery).await,
                Ok(fewest_statements::Applied::ToUser(_))
            )
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
            &[SECRET.into()],
            Duration::from_secs(300),
            now,
        );
        let _ = api::stripe::event::parse(body.as_bytes(), &Default::default());
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

/// The billing columns and snapshot a delivery leaves, with its own ids and times taken out
/// (as one line of text): what the API's probe and the second floor's probe must both write.
async fn written_by(db: &DatabaseConnection, ids: &Ids) -> Result<String, String> {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT concat_ws(' ', 'user:', u.stripe_customer_id = $2 AND u.subscription_id = $3, \
             u.subscription_status, u.current_period_end = s.current_period_end, \
             u.past_due_since IS NULL, u.ends_at_period_end, u.price_grants_pro, \
             'snapshot:', s.customer_id = $2, s.status, s.lifecycle_rank, \
             s.past_due_since IS NULL, s.ends_at_period_end, s.price_grants_pro, \
             'events:', (SELECT count(*) FROM stripe_events e WHERE e.id = $4)) \
             FROM users u JOIN stripe_subscriptions s ON s.subscription_id = $3 WHERE u.id = $1",
            [
                ids.user.into(),
                ids.customer.clone().into(),
                ids.subscription.clone().into(),
                ids.event.clone().into(),
            ],
        ))
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| {
            format!(
                "no user {} with subscription {}",
                ids.user, ids.subscription
            )
        })?;
    row.try_get_by_index::<String>(0).map_err(|e| e.to_string())
}

/// Delivers one probe through the second floor and checks that it wrote what the API wrote
/// for its own probe (`api_probe`, delivered with status `active`): a floor that skipped work
/// the API must do would flatter every ratio against it.
async fn same_writes_as_the_api(
    db: &DatabaseConnection,
    api_probe: &Ids,
    next: &AtomicI64,
    users: i64,
) -> Result<(), String> {
    let ids = Ids::new("probe", next.fetch_add(1, Ordering::Relaxed), users);
    let delivery = ids.delivery(Utc::now().timestamp(), "active");
    let applied = fewest_statements::deliver(db, &delivery)
        .await
        .map_err(|e| format!("the fewest-statements probe failed: {e}"))?;
    if applied != fewest_statements::Applied::ToUser(ids.user) {
        return Err(format!("the fewest-statements probe ended {applied:?}"));
    }
    let repeated = fewest_statements::deliver(db, &delivery)
        .await
        .map_err(|e| format!("the fewest-statements probe's repeat failed: {e}"))?;
    if repeated != fewest_statements::Applied::Repeated {
        return Err(format!(
            "the fewest-statements probe's repeat ended {repeated:?}, not as a repeat"
        ));
    }
    let (api, fewest) = (
        written_by(db, api_probe).await?,
        written_by(db, &ids).await?,
    );
    if api != fewest {
        return Err(format!(
            "the fewest-statements probe wrote {fewest} where the API wrote {api}"
        ));
    }
    println!("the second floor's probe wrote what the API's probe wrote: {fewest}");
    Ok(())
}
