//! Session sync against its floor: `--clients` concurrent users, each request one of
//! `PUT /v1/sessions/{client_id}` creating a session, the same PUT updating one, and
//! `GET /v1/sessions`, in turn. Two kinds of phase, with the same clients, interleaved over
//! `--rounds` rounds so that the machine's drift falls on both alike:
//!
//! 1. `sql`: the statements each request executes, recorded from the API itself (one probe
//!    request of each kind served by the API's router on a connection that records every
//!    statement), replayed as plain statements with each request's ids;
//! 2. `http`: the same requests to the real API served in-process.
//!
//! It prints rates, p50/p99/max per kind, and the ratio http ÷ sql.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use migration::{Migrator, MigratorTrait};
use sea_orm::{DatabaseConnection, Statement, Value};
use serde_json::json;

use crate::about::About;
use crate::chart::{self, Series, Span};
use crate::cpu::Cpu;
use crate::load::{self, Bench, Common, Fill, Sample};
use crate::replay::{self, POOL, RecordingServer, Shape};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// PostgreSQL server URL, without a database name.
    #[arg(
        long,
        env = "BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub server: String,
    /// Database to (re)create for the run; dropped at the end.
    #[arg(long, default_value = "bench_sync")]
    pub database: String,
    /// Users, each on Pro (no session limit) with a token.
    #[arg(long, default_value_t = 100_000)]
    pub users: i64,
    /// Sessions spread over the users before the run (more than --users).
    #[arg(long, default_value_t = 500_000)]
    pub sessions: i64,
    /// Concurrent users sending requests (and concurrent clients of the SQL phase).
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Seconds of each kind of phase, over all rounds.
    #[arg(long, default_value_t = 20)]
    pub duration: u64,
    /// Rounds: each kind of phase runs once per round for --duration ÷ --rounds seconds.
    #[arg(long, default_value_t = 4)]
    pub rounds: u64,
    /// Where to write the SVG chart.
    #[arg(long, default_value = "bench-sync.svg")]
    pub chart: PathBuf,
}

/// The probe's user: large enough not to equal any small number a statement binds (a page
/// size, a limit).
const PROBE_USER: i64 = 7919;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Create,
    Update,
    List,
}

const OPS: [Op; 3] = [Op::Create, Op::Update, Op::List];

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Create => "PUT (create)",
            Op::Update => "PUT (update)",
            Op::List => "GET /v1/sessions",
        }
    }

    /// The authentication lookup runs on its own; a PUT's work in one transaction.
    fn shape(self) -> Shape {
        match self {
            Op::Create | Op::Update => Shape {
                outside: 1,
                transaction: Some(None),
            },
            Op::List => Shape {
                outside: usize::MAX,
                transaction: None,
            },
        }
    }
}

/// The populated table sizes, which requests draw their ids from.
#[derive(Clone, Copy)]
struct Sizes {
    users: i64,
    sessions: i64,
}

/// What one request is about.
struct Request {
    op: Op,
    user: i64,
    client_id: String,
    /// The row an update changes (populated sessions: id g is client `c<g>`).
    session: i64,
}

impl Request {
    fn new(op: Op, index: i64, sizes: Sizes) -> Self {
        let spread = 1 + (index * 48_271) % sizes.sessions;
        match op {
            Op::Update => Self {
                op,
                user: 1 + spread % sizes.users,
                client_id: format!("c{spread}"),
                session: spread,
            },
            _ => Self {
                op,
                user: 1 + spread % sizes.users,
                client_id: format!("n{index}"),
                session: 0,
            },
        }
    }

    fn token(&self) -> String {
        load::user_token(self.user)
    }

    fn body() -> String {
        json!({"device_name": "bench", "payload": {"note": "x".repeat(200)}}).to_string()
    }
}

pub async fn run(args: Args) -> Result<(), String> {
    if args.users <= PROBE_USER || args.sessions <= args.users + 5 {
        return Err(format!(
            "--users must exceed {PROBE_USER} and --sessions must exceed --users + 5"
        ));
    }
    let common = Common {
        server: args.server.clone(),
        database: args.database.clone(),
        users: args.users,
        sessions: args.sessions,
        writers: 0,
        readers: 0,
        noise_window: 0,
    };
    let bench = Bench::create(&common).await?;
    let about = About::read(&bench.db).await;
    about.print();
    let result = measure(&args, &bench, &about).await;
    bench.drop_database().await;
    result
}

async fn measure(args: &Args, bench: &Bench, about: &About) -> Result<(), String> {
    Migrator::up(&bench.db, None)
        .await
        .map_err(|e| e.to_string())?;
    let fill = Fill {
        pro: true,
        json_payload: true,
        ..Fill::default()
    };
    load::populate(&bench.db, args.users, args.sessions, fill).await?;
    // One token per user (`bst_bench_<id>` before the API checked the form of tokens).
    load::execute_all(&bench.db, &[load::INSERT_USER_TOKENS, "ANALYZE api_tokens"]).await?;

    let settings = replay::api_settings(
        &bench.url,
        api::stripe::signature::WebhookSecrets::default(),
    );
    let client = reqwest::Client::new();
    let templates = record(&bench.url, &settings, &client, args).await?;
    for (op, (statements, _)) in OPS.iter().zip(&templates) {
        println!("\n{} executes {} statements:", op.name(), statements.len());
        replay::describe(statements);
    }

    let app = api::Application::build(&settings)
        .await
        .map_err(|e| e.to_string())?;
    let base = format!("http://{}", app.local_addr().map_err(|e| e.to_string())?);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    let outcome = async {
        let own = load::connect(&bench.url, POOL).await?;
        let next = Arc::new(AtomicI64::new(1_000));
        let templates = Arc::new(templates);
        let runner = Runner {
            args,
            next,
            client,
            base,
        };
        runner
            .phase(
                Arc::new(Route::Http),
                "warm-up",
                Duration::from_secs(2.min(args.duration)),
            )
            .await?;
        let rounds = args.rounds.max(1);
        let span = Duration::from_secs_f64(args.duration as f64 / rounds as f64);
        let sql_route = Arc::new(Route::Sql {
            db: own.clone(),
            templates: templates.clone(),
        });
        let http_route = Arc::new(Route::Http);
        let (mut sql, mut http) = (Phase::default(), Phase::default());
        let mut spans = Vec::new();
        for round in 0..rounds {
            for (name, route, tally) in [
                ("sql", &sql_route, &mut sql),
                ("http", &http_route, &mut http),
            ] {
                let phase = runner.phase(route.clone(), name, span).await?;
                spans.push(Span {
                    label: if round == 0 { name } else { "" },
                    from: phase.started,
                    to: phase.ended,
                });
                tally.add(phase);
            }
        }
        let _ = own.close().await;
        println!(
            "\n{rounds} rounds of {:.1} s per kind, interleaved; over all rounds:",
            span.as_secs_f64()
        );
        sql.print("sql", args.clients);
        http.print("http", args.clients);
        println!(
            "\nhttp ÷ sql = {:.2} ({:.0} ÷ {:.0} requests/s)",
            http.rate() / sql.rate(),
            http.rate(),
            sql.rate()
        );
        chart::throughput_timeline(
            &args.chart,
            &format!(
                "Session sync, {} clients: http {:.0}/s = {:.2} × the SQL alone ({:.0}/s)",
                args.clients,
                http.rate(),
                http.rate() / sql.rate(),
                sql.rate()
            ),
            &about.lines(),
            &[
                Series {
                    name: "sql only",
                    samples: &sql.samples,
                    color: chart::INK_GREEN,
                },
                Series {
                    name: "http",
                    samples: &http.samples,
                    color: chart::INK_RED,
                },
            ],
            &spans,
        )?;
        println!("chart: {}", args.chart.display());
        let errors = sql.errors + http.errors;
        if errors > 0 {
            return Err(format!(
                "{errors} requests failed (unexpected status or SQL error)"
            ));
        }
        Ok(())
    }
    .await;
    let _ = stop.send(());
    let _ = server.await;
    outcome
}

/// Serves the API's router on a recording connection and sends one request of each kind;
/// returns each kind's statements with the request they were recorded for.
async fn record(
    url: &str,
    settings: &api::Settings,
    client: &reqwest::Client,
    args: &Args,
) -> Result<Vec<(Vec<Statement>, Request)>, String> {
    let server = RecordingServer::start(url, settings).await?;
    let probes = [
        Request {
            op: Op::Create,
            user: PROBE_USER,
            client_id: "probe-new".to_owned(),
            session: 0,
        },
        // Populated session `c<g>` belongs to user 1 + g % users; past --users, so its id is
        // not also its user's id.
        Request {
            op: Op::Update,
            user: 1 + (args.users + 5) % args.users,
            client_id: format!("c{}", args.users + 5),
            session: args.users + 5,
        },
        Request {
            op: Op::List,
            user: PROBE_USER,
            client_id: String::new(),
            session: 0,
        },
    ];
    let mut templates = Vec::new();
    let mut failure = None;
    for probe in probes {
        let _ = server.recorder.take();
        if !send(client, &server.base, &probe).await {
            failure = Some(format!("the probe request {} failed", probe.op.name()));
            break;
        }
        templates.push((server.recorder.take(), probe));
    }
    server.stop().await;
    match failure {
        Some(failure) => Err(failure),
        None => Ok(templates),
    }
}

/// `request` over HTTP; true when answered as expected.
async fn send(client: &reqwest::Client, base: &str, request: &Request) -> bool {
    let auth = format!("Bearer {}", request.token());
    let (response, expected) = match request.op {
        Op::List => (
            client
                .get(format!("{base}/v1/sessions"))
                .header("authorization", auth)
                .send()
                .await,
            200,
        ),
        op => (
            client
                .put(format!("{base}/v1/sessions/{}", request.client_id))
                .header("authorization", auth)
                .header("content-type", "application/json")
                .body(Request::body())
                .send()
                .await,
            if op == Op::Create { 201 } else { 200 },
        ),
    };
    match response {
        // Read the body: the server's work includes writing it.
        Ok(r) if r.status().as_u16() == expected => r.bytes().await.is_ok(),
        _ => false,
    }
}

/// `template` (recorded for `from`) with the ids of `to`.
fn substitute(template: &[Statement], from: &Request, to: &Request) -> Vec<Statement> {
    let text = |s: String| Value::String(Some(s));
    let mut swaps = vec![
        (
            text(api::auth::hash(&from.token())),
            text(api::auth::hash(&to.token())),
        ),
        (Value::BigInt(Some(from.user)), Value::BigInt(Some(to.user))),
    ];
    if !from.client_id.is_empty() {
        swaps.push((text(from.client_id.clone()), text(to.client_id.clone())));
    }
    if from.session != 0 {
        swaps.push((
            Value::BigInt(Some(from.session)),
            Value::BigInt(Some(to.session)),
        ));
    }
    replay::substitute(template, &swaps)
}

enum Route {
    Sql {
        db: DatabaseConnection,
        templates: Arc<Vec<(Vec<Statement>, Request)>>,
    },
    Http,
}

struct Runner<'a> {
    args: &'a Args,
    next: Arc<AtomicI64>,
    client: reqwest::Client,
    base: String,
}

/// Phases of one kind: one round's, or every round's added up.
#[derive(Default)]
struct Phase {
    seconds: f64,
    errors: u64,
    /// Every request, then each kind's.
    samples: Vec<Sample>,
    by_op: [Vec<Sample>; 3],
    started: f64,
    ended: f64,
    machine_busy_seconds: f64,
    process_seconds: f64,
}

impl Phase {
    fn add(&mut self, phase: Phase) {
        self.seconds += phase.seconds;
        self.errors += phase.errors;
        self.machine_busy_seconds += phase.machine_busy_seconds;
        self.process_seconds += phase.process_seconds;
        self.samples.extend(phase.samples);
        for (all, some) in self.by_op.iter_mut().zip(phase.by_op) {
            all.extend(some);
        }
    }

    fn rate(&self) -> f64 {
        self.samples.len() as f64 / self.seconds.max(1e-9)
    }

    fn print(&self, name: &str, clients: usize) {
        println!(
            "{name:<8} {:>7} requests, {clients} clients, {:.1} s: {:>6.0}/s; p50/p99/max {} ms; \
             {} failed; machine CPU {:.0}% busy, this process {:.2} ms CPU per request",
            self.samples.len(),
            self.seconds,
            self.rate(),
            load::percentiles(&load::latencies(&self.samples)),
            self.errors,
            self.machine_busy_seconds / self.seconds.max(1e-9) * 100.0,
            self.process_seconds * 1e3 / self.samples.len().max(1) as f64,
        );
        for (op, samples) in OPS.iter().zip(&self.by_op) {
            println!(
                "  {:<18} {:>6.0}/s  p50/p99/max {} ms",
                op.name(),
                samples.len() as f64 / self.seconds.max(1e-9),
                load::percentiles(&load::latencies(samples))
            );
        }
    }
}

impl Runner<'_> {
    async fn phase(&self, route: Arc<Route>, name: &str, span: Duration) -> Result<Phase, String> {
        let cpu = Cpu::read();
        let started = load::now();
        let deadline = Instant::now() + span;
        let tasks: Vec<_> = (0..self.args.clients)
            .map(|_| {
                let (route, next) = (route.clone(), self.next.clone());
                let (client, base) = (self.client.clone(), self.base.clone());
                let sizes = Sizes {
                    users: self.args.users,
                    sessions: self.args.sessions,
                };
                tokio::spawn(async move {
                    let mut by_op: [Vec<Sample>; 3] = Default::default();
                    let mut errors = 0u64;
                    while Instant::now() < deadline {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let k = (index % 3) as usize;
                        let request = Request::new(OPS[k], index, sizes);
                        let at = load::now();
                        let began = Instant::now();
                        let ok = match &*route {
                            Route::Http => send(&client, &base, &request).await,
                            Route::Sql { db, templates } => {
                                let (template, from) = &templates[k];
                                replay::replay(
                                    db,
                                    &substitute(template, from, &request),
                                    request.op.shape(),
                                )
                                .await
                                .is_ok()
                            }
                        };
                        by_op[k].push(Sample {
                            at,
                            latency: began.elapsed(),
                        });
                        errors += u64::from(!ok);
                    }
                    (by_op, errors)
                })
            })
            .collect();
        let mut by_op: [Vec<Sample>; 3] = Default::default();
        let mut errors = 0;
        for task in tasks {
            let (samples, e) = task.await.map_err(|e| e.to_string())?;
            for (all, some) in by_op.iter_mut().zip(samples) {
                all.extend(some);
            }
            errors += e;
        }
        let ended = load::now();
        let used = cpu.since();
        let samples: Vec<Sample> = by_op.iter().flatten().copied().collect();
        let seconds = ended - started;
        let phase = Phase {
            seconds,
            errors,
            samples,
            by_op,
            started,
            ended,
            machine_busy_seconds: used.machine_busy * seconds,
            process_seconds: used.process_seconds,
        };
        phase.print(name, self.args.clients);
        Ok(phase)
    }
}
