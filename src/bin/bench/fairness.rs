//! Fairness under floods (issue 19): one user's latency while others misbehave. A "victim"
//! user sends `GET /v1/sessions` one request at a time through every phase; each phase runs
//! `--duration` seconds with one kind of other traffic:
//!
//! 1. `quiet`: nothing else (the reference);
//! 2. `bad tokens`: `--attackers` clients, each repeating a token of its own that opens
//!    nothing: half malformed (refused by their format, no query), half well-formed but
//!    unknown (one query each, then the negative cache);
//! 3. `fresh bad tokens`: the same clients, a new well-formed unknown token on every request
//!    (each would cost a query; the per-peer limit, UNKNOWN_TOKENS_PER_PEER, stops that);
//! 4. `read flood`: `--flooders` concurrent `GET /v1/billing` from one other signed-in user;
//! 5. `quiet again`: nothing else, to show the machine's drift over the run.
//!
//! Three processes, as in production: the release `billing` binary serves the API (started
//! here with its documented environment), this process times the victim, and the other
//! clients run in a child process (`bench fairness-flood`, this binary re-executed) with its
//! own runtime. The attackers connect from `--attacker-addresses` source addresses
//! (127.0.1.1 and up: Linux routes all of 127.0.0.0/8 to this machine), so a per-peer limit
//! sees several peers, none of them the victim's 127.0.0.1; the flooding user from 127.1.0.1. All three share the machine's
//! cores: the flood's own CPU is printed beside the server's, so it can be told apart.
//!
//! It prints the victim's p50/p99/max per phase and its p99 over the quiet one; the issue asks
//! for at most 2× in phases 2 and 4.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use migration::{Migrator, MigratorTrait};

use crate::about::About;
use crate::cpu::{self, Cpu};
use crate::load::{self, Bench, Common, Fill};

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
    #[arg(long, default_value = "bench_fairness")]
    pub database: String,
    /// Users (each with a token and five sessions); the victim is user 1, the flooder user 2.
    #[arg(long, default_value_t = 10_000)]
    pub users: i64,
    /// Concurrent clients sending bad tokens.
    #[arg(long, default_value_t = 1_000)]
    pub attackers: usize,
    /// Source addresses the attackers connect from (127.0.1.1 and up), shared round-robin.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=60_000))]
    pub attacker_addresses: u16,
    /// Concurrent `GET /v1/billing` of the flooding user.
    #[arg(long, default_value_t = 300)]
    pub flooders: usize,
    /// Seconds the victim is measured in each phase (the others start a second earlier).
    #[arg(long, default_value_t = 15)]
    pub duration: u64,
    /// The server's UNKNOWN_TOKENS_PER_PEER (its default: 60; 0: no limit).
    #[arg(long, default_value_t = 60)]
    pub unknown_tokens_per_peer: u32,
    /// Requests a second the victim sends, one at a time on a fixed schedule (a busy client,
    /// within any sane per-token rate); 0: back to back, as fast as answers come (the victim
    /// is then a flood of its own, and meets TOKEN_REQUESTS_PER_SEC).
    #[arg(long, default_value_t = 50)]
    pub victim_rate: u32,
    /// The server's TOKEN_REQUESTS_PER_SEC (its default: 100; 0: no limit).
    #[arg(long, default_value_t = 100)]
    pub token_requests_per_sec: u32,
    /// The `billing` binary to serve with (default: the one beside this `bench`).
    #[arg(long)]
    pub billing_bin: Option<PathBuf>,
    /// `nice` value of the flood process (0: none). The flood then yields the cores to the
    /// server and the victim: say so with any figure measured that way.
    #[arg(long, default_value_t = 0)]
    pub flood_nice: i32,
}

/// The hidden `bench fairness-flood`: the other clients of one phase, in their own process.
#[derive(clap::Args, Debug)]
pub struct FloodArgs {
    #[arg(long)]
    pub base: String,
    #[arg(long, value_enum)]
    pub kind: Others,
    #[arg(long)]
    pub clients: usize,
    /// The first source address; the others follow it.
    #[arg(long)]
    pub from: Ipv4Addr,
    #[arg(long, default_value_t = 1)]
    pub addresses: u16,
    /// Milliseconds to run.
    #[arg(long)]
    pub millis: u64,
}

/// The victim and the user flooding reads.
const VICTIM: i64 = 1;
const FLOODER: i64 = 2;

/// What the other clients send in a phase.
#[derive(Clone, Copy, PartialEq, Debug, clap::ValueEnum)]
pub enum Others {
    None,
    BadTokens,
    FreshBadTokens,
    ReadFlood,
}

impl Others {
    /// The path and token the `client`-th other client sends as its `n`-th request.
    fn request(self, client: usize, n: u64) -> (&'static str, String) {
        match self {
            Others::None => ("/v1/sessions", String::new()),
            Others::BadTokens if client.is_multiple_of(2) => {
                ("/v1/sessions", format!("bst_bad{client}"))
            }
            // Users' tokens are `bst_` and the id in 64 hex digits: the top bit set is no user.
            Others::BadTokens => ("/v1/sessions", format!("bst_f{client:063x}")),
            Others::FreshBadTokens => ("/v1/sessions", format!("bst_e{client:031x}{n:032x}")),
            Others::ReadFlood => ("/v1/billing", load::user_token(FLOODER)),
        }
    }

    fn clients(self, args: &Args) -> usize {
        match self {
            Others::None => 0,
            Others::BadTokens | Others::FreshBadTokens => args.attackers,
            Others::ReadFlood => args.flooders,
        }
    }

    /// Source addresses, first and how many: the attackers' own from 127.0.1.1; the flooding
    /// user's one, 127.1.0.1 (neither the victim's 127.0.0.1 nor an attacker's, whose
    /// allowance the attackers spent).
    fn addresses(self, args: &Args) -> (Ipv4Addr, u16) {
        match self {
            Others::BadTokens | Others::FreshBadTokens => {
                (Ipv4Addr::new(127, 0, 1, 1), args.attacker_addresses)
            }
            _ => (Ipv4Addr::new(127, 1, 0, 1), 1),
        }
    }
}

/// The `i`-th source address from `first`.
fn source_address(first: Ipv4Addr, i: u16) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(u32::from(first).wrapping_add(u32::from(i))))
}

pub async fn run(args: Args) -> Result<(), String> {
    let common = Common {
        server: args.server.clone(),
        database: args.database.clone(),
        users: args.users,
        sessions: args.users * 5,
        writers: 0,
        readers: 0,
        noise_window: 0,
    };
    let bench = Bench::create(&common).await?;
    About::read(&bench.db).await.print();
    let result = measure(&args, &bench).await;
    bench.drop_database().await;
    result
}

/// The release `billing`, killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sibling_binary(name: &str) -> Result<PathBuf, String> {
    let bench = std::env::current_exe().map_err(|e| format!("this binary's path: {e}"))?;
    Ok(bench.with_file_name(name))
}

async fn start_server(args: &Args, database_url: &str) -> Result<Server, String> {
    let binary = match &args.billing_bin {
        Some(path) => path.clone(),
        None => sibling_binary("billing")?,
    };
    // A free port now; the server binds it a moment later.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let child = Command::new(&binary)
        .arg("serve")
        .env_clear()
        .env("DATABASE_URL", database_url)
        .env("BIND_ADDR", format!("127.0.0.1:{port}"))
        .env("STRIPE_MODE", "test")
        .env(
            "UNKNOWN_TOKENS_PER_PEER",
            args.unknown_tokens_per_peer.to_string(),
        )
        .env(
            "TOKEN_REQUESTS_PER_SEC",
            args.token_requests_per_sec.to_string(),
        )
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    let client = client(None)?;
    let ready = Instant::now() + Duration::from_secs(60);
    while Instant::now() < ready {
        let healthy = client
            .get(format!("{}/healthz", server.base))
            .send()
            .await
            .is_ok_and(|response| response.status() == 200);
        if healthy {
            return Ok(server);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "{} did not answer /healthz within 60 s",
        binary.display()
    ))
}

async fn measure(args: &Args, bench: &Bench) -> Result<(), String> {
    if args.users < FLOODER {
        return Err(format!("--users must be at least {FLOODER}"));
    }
    Migrator::up(&bench.db, None)
        .await
        .map_err(|e| e.to_string())?;
    let fill = Fill {
        pro: true,
        json_payload: true,
        ..Fill::default()
    };
    load::populate(&bench.db, args.users, args.users * 5, fill).await?;
    load::execute_all(&bench.db, &[load::INSERT_USER_TOKENS, "ANALYZE api_tokens"]).await?;

    let server = start_server(args, &bench.url).await?;
    println!(
        "\nserver: {} (pid {}), UNKNOWN_TOKENS_PER_PEER={}, TOKEN_REQUESTS_PER_SEC={}; victim \
         {} requests/s (0: back to back); attackers from {} addresses; flood nice {}",
        server.base,
        server.child.id(),
        args.unknown_tokens_per_peer,
        args.token_requests_per_sec,
        args.victim_rate,
        args.attacker_addresses,
        args.flood_nice
    );
    println!(
        "\nphase              victim: requests  p50/p99/max ms        p99 ÷ quiet   others: clients  requests/s  answers                 CPU: machine  server  flood"
    );
    let span = Duration::from_secs(args.duration);
    // Warm-up, not shown.
    phase(&server, args, Others::None, Duration::from_secs(2)).await?;
    let quiet = phase(&server, args, Others::None, span).await?;
    quiet.print("quiet", quiet.p99);
    for (name, others) in [
        ("bad tokens", Others::BadTokens),
        ("fresh bad tokens", Others::FreshBadTokens),
        ("read flood", Others::ReadFlood),
        ("quiet again", Others::None),
    ] {
        phase(&server, args, others, span)
            .await?
            .print(name, quiet.p99);
    }
    drop(server);
    Ok(())
}

struct Figures {
    victim: Vec<Duration>,
    victim_failed: u64,
    p99: Duration,
    clients: usize,
    others_rate: f64,
    /// The other clients' answers by status (0: no answer).
    answers: BTreeMap<u16, u64>,
    machine_busy: f64,
    /// CPU seconds per second (1.0: one core) of the server and of the flood process.
    server_cpu: f64,
    flood_cpu: f64,
}

impl Figures {
    fn print(&self, name: &str, quiet_p99: Duration) {
        let answers: Vec<String> = self
            .answers
            .iter()
            .map(|(status, n)| format!("{status}×{n}"))
            .collect();
        println!(
            "{name:<18} {:>16}  {:<21} {:>11.2}   {:>15}  {:>10.0}  {:<23} {:>11.0}%  {:>5.0}%  {:>4.0}%{}",
            self.victim.len(),
            load::percentiles(&self.victim),
            self.p99.as_secs_f64() / quiet_p99.as_secs_f64().max(1e-9),
            self.clients,
            self.others_rate,
            if answers.is_empty() {
                "-".to_owned()
            } else {
                answers.join(" ")
            },
            self.machine_busy * 100.0,
            self.server_cpu * 100.0,
            self.flood_cpu * 100.0,
            if self.victim_failed > 0 {
                format!("  (victim: {} requests failed)", self.victim_failed)
            } else {
                String::new()
            }
        );
    }
}

/// The flood of one phase: this binary re-executed as `fairness-flood`.
fn start_flood(
    server: &Server,
    args: &Args,
    others: Others,
    run_for: Duration,
) -> Result<Child, String> {
    let bench = std::env::current_exe().map_err(|e| format!("this binary's path: {e}"))?;
    let mut command = if args.flood_nice != 0 {
        let mut nice = Command::new("nice");
        nice.arg("-n").arg(args.flood_nice.to_string()).arg(&bench);
        nice
    } else {
        Command::new(&bench)
    };
    command
        .arg("fairness-flood")
        .arg("--base")
        .arg(&server.base)
        .arg("--kind")
        .arg(match others {
            Others::None => "none",
            Others::BadTokens => "bad-tokens",
            Others::FreshBadTokens => "fresh-bad-tokens",
            Others::ReadFlood => "read-flood",
        })
        .arg("--clients")
        .arg(others.clients(args).to_string())
        .arg("--from")
        .arg(others.addresses(args).0.to_string())
        .arg("--addresses")
        .arg(others.addresses(args).1.to_string())
        .arg("--millis")
        .arg(run_for.as_millis().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{}: {e}", bench.display()))
}

/// One phase: the other clients start, a second later the victim is measured for `span`, and
/// the others stop with it.
async fn phase(
    server: &Server,
    args: &Args,
    others: Others,
    span: Duration,
) -> Result<Figures, String> {
    let clients = others.clients(args);
    let ramp = if clients > 0 {
        Duration::from_secs(1)
    } else {
        Duration::ZERO
    };
    let flood = if clients > 0 {
        Some(start_flood(server, args, others, ramp + span)?)
    } else {
        None
    };
    let flood_pid = flood.as_ref().map(Child::id);
    tokio::time::sleep(ramp).await;
    let cpu = Cpu::read();
    let server_before = cpu::process_jiffies(server.child.id());
    let flood_before = flood_pid.and_then(cpu::process_jiffies);
    let measured = Instant::now();
    let deadline = measured + span;
    let victim_client = client(None)?;
    let victim_token = load::user_token(VICTIM);
    let mut victim = Vec::new();
    let mut victim_failed = 0;
    let mut schedule = (args.victim_rate > 0).then(|| {
        let mut ticks = tokio::time::interval(Duration::from_secs(1) / args.victim_rate.max(1));
        // A late request does not make the next ones bunch up.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    while Instant::now() < deadline {
        if let Some(ticks) = schedule.as_mut() {
            ticks.tick().await;
        }
        let began = Instant::now();
        let ok = match victim_client
            .get(format!("{}/v1/sessions", server.base))
            .bearer_auth(&victim_token)
            .send()
            .await
        {
            Ok(response) => response.status() == 200 && response.bytes().await.is_ok(),
            Err(_) => false,
        };
        victim.push(began.elapsed());
        victim_failed += u64::from(!ok);
    }
    let seconds = measured.elapsed().as_secs_f64();
    let used = cpu.since();
    let per_second = |before: Option<u64>, pid: Option<u32>| match (
        before,
        pid.and_then(cpu::process_jiffies),
    ) {
        (Some(before), Some(after)) => {
            after.saturating_sub(before) as f64 / cpu::TICKS_PER_SECOND / seconds
        }
        _ => 0.0,
    };
    let server_cpu = per_second(server_before, Some(server.child.id()));
    let flood_cpu = per_second(flood_before, flood_pid);
    let mut answers = BTreeMap::new();
    let mut total = 0;
    if let Some(flood) = flood {
        let output = tokio::task::spawn_blocking(move || flood.wait_with_output())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if !output.status.success() {
            return Err(format!("the flood process failed: {}", output.status));
        }
        // One `status count` pair a line.
        for line in String::from_utf8_lossy(&output.stdout).lines() {
            if let Some((status, n)) = line.split_once(' ')
                && let (Ok(status), Ok(n)) = (status.parse::<u16>(), n.parse::<u64>())
            {
                *answers.entry(status).or_default() += n;
                total += n;
            }
        }
    }
    Ok(Figures {
        p99: load::quantile(&victim, 0.99),
        victim,
        victim_failed,
        clients,
        others_rate: total as f64 / (seconds + ramp.as_secs_f64()),
        answers,
        machine_busy: used.machine_busy,
        server_cpu,
        flood_cpu,
    })
}

/// `bench fairness-flood`: `--clients` concurrent clients sending `--kind` requests for
/// `--millis`, connecting from `--addresses` source addresses; prints `status count` lines.
pub async fn flood(args: FloodArgs) -> Result<(), String> {
    let pools = (0..args.addresses.max(1))
        .map(|i| client(Some(source_address(args.from, i))))
        .collect::<Result<Vec<_>, _>>()?;
    let deadline = Instant::now() + Duration::from_millis(args.millis);
    let tasks: Vec<_> = (0..args.clients)
        .map(|client| {
            let pool = pools[client % pools.len()].clone();
            let (base, kind) = (args.base.clone(), args.kind);
            tokio::spawn(async move {
                let mut answers = BTreeMap::<u16, u64>::new();
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let (path, token) = kind.request(client, n);
                    n += 1;
                    let status = match pool
                        .get(format!("{base}{path}"))
                        .bearer_auth(token)
                        .send()
                        .await
                    {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            let _ = response.bytes().await;
                            status
                        }
                        Err(_) => 0,
                    };
                    *answers.entry(status).or_default() += 1;
                }
                answers
            })
        })
        .collect();
    let mut answers = BTreeMap::<u16, u64>::new();
    for task in tasks {
        for (status, n) in task.await.map_err(|e| e.to_string())? {
            *answers.entry(status).or_default() += n;
        }
    }
    for (status, n) in answers {
        println!("{status} {n}");
    }
    Ok(())
}

fn client(source: Option<IpAddr>) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(60));
    if let Some(source) = source {
        builder = builder.local_address(source);
    }
    builder.build().map_err(|e| e.to_string())
}
