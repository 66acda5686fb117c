//! Every migration of `Migrator::migrations()` under live clients, on PostgreSQL and MariaDB:
//! the bar m006 was held to, as a property of the list rather than of one migration.
//!
//! For each migration, in a database of its own: migrate to the one before, seed users (half
//! of them paying, where the schema has billing columns), sessions, tokens, events and
//! customers (where their tables exist), start clients, measure the no-migration floor, let
//! the clients run alone for the control window ([`CONTROL`]), then apply the migration, roll
//! it back and apply it again, the clients running throughout.
//!
//! The clients issue the statements of the API's requests, shaped as the API runs them
//! (transactions, the user-row lock, the API's 2 s lock wait set on each connection as the
//! API's pool sets it): a sign-up, a session sync (update and create) under the user's row
//! lock, a plain `UPDATE users`, a token lookup, a webhook delivery's transaction and a tier
//! read. They are written here, not recorded from the API: the API's code targets the newest
//! schema, and each migration must be tried under the clients of the schema before it. A
//! kind whose statements fail on the schema before the migration (its tables do not exist
//! yet) is left out of that migration's run, and the row says which kinds ran.
//!
//! A direction passes when no client statement failed, no client request overlapping it took
//! longer than the floor's p99 plus [`bound`], and the migration completed. A migration that
//! cannot pass on a backend declares it ([`migration::step::Planned::not_live_safe`]); its
//! row is reported, marked, and not failed.
//!
//! Shared by `bench migrations` (1M users / 5M sessions; enforces the whole bar) and the CI
//! test `tests/live_migrations.rs` (small; asserts completion and no failed statement, and
//! prints the waits, which a shared CI machine makes noise), so both run the same code.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, Statement,
    TransactionTrait, Value,
};

/// The API's default lock wait (`DB_LOCK_TIMEOUT_MS`), set on every client connection.
const CLIENT_LOCK_WAIT: Duration = Duration::from_secs(2);

/// How much longer than the floor's p99 a client may wait while a migration runs.
/// PostgreSQL: 100 ms. MariaDB: 1,100 ms, because its lock waits count whole seconds: a
/// lock-timed DDL step that queues for its metadata lock holds the clients queued behind it
/// for up to the migrator's minimum lock wait, one second, before it gives up and retries.
pub fn bound(backend: DbBackend) -> Duration {
    match backend {
        DbBackend::MySql => Duration::from_millis(1100),
        _ => Duration::from_millis(100),
    }
}

/// The size of one run.
#[derive(Clone, Copy, Debug)]
pub struct Size {
    pub users: i64,
    pub sessions: i64,
    /// Concurrent clients.
    pub clients: usize,
    /// How long the floor is measured before the migration.
    pub floor: Duration,
    /// How long the clients then run alone, still before the migration, for the control row
    /// ([`CONTROL`]); zero for none.
    pub control: Duration,
}

/// The direction of the control row: the clients alone, measured like a direction (the
/// longest request in the window) over a window as long as a long migration's, after the
/// floor and before the migration. The floor is short and starts right after the seed's
/// `CHECKPOINT`, when nothing is dirty; over a minute the server reaches the state a long
/// migration runs in (checkpoints, the kernel writing back what the clients dirtied), and
/// the control row says how long the clients wait there with no migration at all.
pub const CONTROL: &str = "none (control)";

/// One migration in one direction, as measured.
#[derive(Clone, Debug)]
pub struct Row {
    pub migration: String,
    pub backend: DbBackend,
    /// `up`, `down`, `up again`.
    pub direction: &'static str,
    pub wall: Duration,
    pub floor_p99: Duration,
    /// The longest client request that overlapped the migration.
    pub worst: Duration,
    pub requests: usize,
    pub failed: usize,
    /// The first failures, for the report.
    pub failures: Vec<String>,
    /// The migration's own error, when it did not complete.
    pub error: Option<String>,
    /// A migration declared not live-safe here that refused under traffic (`error`) is run
    /// again with the clients paused, as its declaration tells an operator to: how long that
    /// took, when it completed.
    pub quiet: Option<Duration>,
    /// The client kinds that ran.
    pub kinds: Vec<&'static str>,
    /// What the migration declares when it cannot meet the bar on this backend.
    pub exempt: Option<&'static str>,
}

impl Row {
    /// The clients alone, not a migration's direction ([`CONTROL`]): reported, never judged.
    pub fn is_control(&self) -> bool {
        self.direction == CONTROL
    }

    pub fn meets_the_bar(&self) -> bool {
        self.error.is_none()
            && self.failed == 0
            && self.worst <= self.floor_p99 + bound(self.backend)
    }

    /// Completed under traffic, or, declared not live-safe here, in the quiet window its
    /// declaration asks for.
    fn completed(&self) -> bool {
        self.error.is_none() || (self.exempt.is_some() && self.quiet.is_some())
    }

    /// Passed, or failed as its migration declares it may.
    pub fn acceptable(&self) -> bool {
        self.completed() && (self.meets_the_bar() || self.exempt.is_some())
    }

    /// The bar without its timing: the migration completed and no client statement failed
    /// (or the migration declares it may fail here). What CI asserts: waits measured on a
    /// shared CI machine are noise-bound, and speed targets live in the benchmark.
    pub fn completed_without_failures(&self) -> bool {
        self.completed() && (self.failed == 0 || self.exempt.is_some())
    }

    pub const HEADER: &'static str = "| migration | backend | direction | wall | worst wait | floor p99 + bound | requests | failed | verdict | requests that ran |\n|---|---|---|---:|---:|---:|---:|---:|---|---|";

    /// A Markdown table row.
    pub fn markdown(&self) -> String {
        let verdict = match (&self.error, self.meets_the_bar(), self.exempt) {
            _ if self.is_control() && self.meets_the_bar() => {
                "control (no migration): within the bar".to_owned()
            }
            _ if self.is_control() => {
                "control (no migration): the clients alone waited longer than the bar".to_owned()
            }
            (Some(e), _, Some(why)) if self.quiet.is_some() => format!(
                "declared not live-safe: {why}; under traffic it refused ({e}); with the \
                 clients paused it completed in {}",
                ms(self.quiet.unwrap_or_default())
            ),
            (Some(e), _, _) => format!("migration failed: {e}"),
            (None, true, _) => "pass".to_owned(),
            (None, false, Some(why)) => format!("declared not live-safe: {why}"),
            (None, false, None) if self.failed == 0 => {
                "FAIL: waited longer than the bar".to_owned()
            }
            (None, false, None) => format!("FAIL: {}", self.failures.join("; ")),
        };
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {verdict} | {} |",
            self.migration,
            backend_name(self.backend),
            self.direction,
            ms(self.wall),
            ms(self.worst),
            ms(self.floor_p99 + bound(self.backend)),
            self.requests,
            self.failed,
            self.kinds.join(", "),
        )
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

pub fn backend_name(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => "PostgreSQL",
        DbBackend::MySql => "MariaDB",
        _ => "SQLite",
    }
}

/// The migrations' names, in the order of `Migrator::migrations()`.
pub fn migration_names() -> Vec<String> {
    Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect()
}

/// Runs migration number `index` (0-based, in `Migrator::migrations()`) under clients, in a
/// fresh database on the server at `server_url` (no database name), dropped afterwards.
pub async fn run_one(
    server_url: &str,
    backend: DbBackend,
    index: usize,
    size: Size,
) -> Result<Vec<Row>, String> {
    let server = server_url.trim_end_matches('/');
    let name = format!(
        "live_{}_{:x}",
        index,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or_default()
    );
    let admin_url = match backend {
        DbBackend::Postgres => format!("{server}/postgres"),
        _ => server.to_owned(),
    };
    let admin = connect(&admin_url, 1, None).await?;
    let create = match backend {
        DbBackend::MySql => format!("CREATE DATABASE {name} CHARACTER SET utf8mb4"),
        _ => format!("CREATE DATABASE {name}"),
    };
    admin
        .execute_unprepared(&create)
        .await
        .map_err(|e| format!("{create}: {e}"))?;
    let url = format!("{server}/{name}");
    let outcome = measure(&url, backend, index, size).await;
    let drop = match backend {
        DbBackend::Postgres => format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        _ => format!("DROP DATABASE IF EXISTS {name}"),
    };
    let _ = admin.execute_unprepared(&drop).await;
    let _ = admin.close().await;
    outcome
}

async fn measure(
    url: &str,
    backend: DbBackend,
    index: usize,
    size: Size,
) -> Result<Vec<Row>, String> {
    let migrations = Migrator::migrations();
    let Some(migration) = migrations.get(index) else {
        return Err(format!("no migration number {index}"));
    };
    let name = migration.name().to_owned();
    let exempt = migration::plan_of(&name).and_then(|plan| {
        plan.not_live_safe()
            .iter()
            .find(|e| e.backend == backend)
            .map(|e| e.why)
    });
    let migrator = connect(url, 4, None).await?;
    if index > 0 {
        Migrator::up(&migrator, Some(index as u32))
            .await
            .map_err(|e| format!("up to the migration before {name}: {e}"))?;
    }
    seed(&migrator, size).await?;

    let clients = connect(url, size.clients as u32, Some(CLIENT_LOCK_WAIT)).await?;
    let users = size.users.max(1);
    let mut kinds = Vec::new();
    for kind in Kind::ALL {
        if kind.run(&clients, users, 1).await.is_ok() {
            kinds.push(kind);
        }
    }
    let log = Arc::new(Mutex::new(Vec::<Request>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    // 1 is the trial request of each kind.
    let counter = Arc::new(AtomicU64::new(2));
    let mut tasks = Vec::new();
    for client in 0..size.clients {
        let (db, log, stop, paused, counter, kinds) = (
            clients.clone(),
            log.clone(),
            stop.clone(),
            paused.clone(),
            counter.clone(),
            kinds.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut turn = client;
            while !stop.load(Ordering::Relaxed) {
                if paused.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let Some(kind) = kinds.get(turn % kinds.len().max(1)).copied() else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                turn += 1;
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let start = Instant::now();
                let outcome = kind.run(&db, users, n).await;
                let request = Request {
                    kind: kind.name(),
                    start,
                    end: Instant::now(),
                    error: outcome.err().map(|e| e.to_string()),
                };
                if let Ok(mut all) = log.lock() {
                    all.push(request);
                }
            }
        }));
    }

    let floor_start = Instant::now();
    tokio::time::sleep(size.floor).await;
    let floor = (floor_start, Instant::now());
    // With no client kind (m001: no table yet) there is nothing to control.
    let control_window = if kinds.is_empty() {
        Duration::ZERO
    } else {
        size.control
    };
    tokio::time::sleep(control_window).await;
    let control = (floor.1, Instant::now());
    let mut phases = Vec::new();
    let apply = |up: bool| {
        let migrator = migrator.clone();
        async move {
            if up {
                Migrator::up(&migrator, Some(1)).await
            } else {
                Migrator::down(&migrator, Some(1)).await
            }
        }
    };
    for (direction, up) in [("up", true), ("down", false), ("up again", true)] {
        let start = Instant::now();
        let outcome = apply(up).await;
        let end = Instant::now();
        let mut quiet = None;
        if outcome.is_err() && exempt.is_some() {
            // The quiet window the declaration asks for: no new request, and long enough for
            // any request in flight to end (the clients' lock wait is CLIENT_LOCK_WAIT).
            paused.store(true, Ordering::Relaxed);
            tokio::time::sleep(CLIENT_LOCK_WAIT + Duration::from_millis(500)).await;
            let again = Instant::now();
            if apply(up).await.is_ok() {
                quiet = Some(again.elapsed());
            }
            paused.store(false, Ordering::Relaxed);
        }
        let completed = outcome.is_ok() || quiet.is_some();
        phases.push((direction, start, end, outcome.err(), quiet));
        // A moment of clients between directions, as between two deploys.
        tokio::time::sleep(Duration::from_millis(200)).await;
        if !completed {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let _ = clients.close().await;
    let _ = migrator.close().await;

    let requests = log.lock().map(|all| all.clone()).unwrap_or_default();
    // A request that fails with no migration running is the clients' own fault (a kind that
    // deadlocks with another, say), which would otherwise go unseen: only the requests that
    // overlap a direction are judged.
    let no_migration = (floor.0, control.1);
    if let Some(failed) = requests
        .iter()
        .find(|r| r.start >= no_migration.0 && r.end <= no_migration.1 && r.error.is_some())
    {
        return Err(format!(
            "{name}: a {} request failed with no migration running: {}",
            failed.kind,
            failed.error.as_deref().unwrap_or_default()
        ));
    }
    let mut floor_latencies: Vec<Duration> = requests
        .iter()
        .filter(|r| r.start >= floor.0 && r.end <= floor.1)
        .map(|r| r.end - r.start)
        .collect();
    floor_latencies.sort();
    let floor_p99 = quantile(&floor_latencies, 0.99);
    let kind_names: Vec<&'static str> = kinds.iter().map(|k| k.name()).collect();
    let control_row =
        (!control_window.is_zero()).then_some((CONTROL, control.0, control.1, None, None));
    Ok(control_row
        .into_iter()
        .chain(phases)
        .map(|(direction, start, end, error, quiet)| {
            // The control window counts only requests wholly inside it (those in flight at
            // its edges belong to the floor or to the migration); a direction, every request
            // that overlapped it.
            let during: Vec<&Request> = requests
                .iter()
                .filter(|r| {
                    if direction == CONTROL {
                        r.start >= start && r.end <= end
                    } else {
                        r.start < end && r.end > start
                    }
                })
                .collect();
            let failures: Vec<String> = during
                .iter()
                .filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.kind)))
                .collect();
            Row {
                migration: name.clone(),
                backend,
                direction,
                wall: end - start,
                floor_p99,
                worst: during
                    .iter()
                    .map(|r| r.end - r.start)
                    .max()
                    .unwrap_or_default(),
                requests: during.len(),
                failed: failures.len(),
                failures: failures.into_iter().take(3).collect(),
                error: error.map(|e| e.to_string()),
                quiet,
                kinds: kind_names.clone(),
                exempt,
            }
        })
        .collect())
}

#[derive(Clone)]
struct Request {
    kind: &'static str,
    start: Instant,
    end: Instant,
    error: Option<String>,
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A pool; `lock_wait` bounds every lock wait of its sessions with the API's own settings
/// (`api::startup::bound_lock_waits`), so the clients wait as the API's would.
async fn connect(
    url: &str,
    connections: u32,
    lock_wait: Option<Duration>,
) -> Result<DatabaseConnection, String> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(connections)
        .min_connections(connections)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(60))
        .sqlx_logging(false);
    migration::connect::without_pool_reaper(&mut options);
    if let Some(wait) = lock_wait {
        let backend = if url.starts_with("postgres") {
            DbBackend::Postgres
        } else {
            DbBackend::MySql
        };
        api::startup::bound_lock_waits(&mut options, backend, wait);
    }
    Database::connect(options)
        .await
        .map_err(|e| format!("cannot connect: {e}"))
}

/// A webhook delivery's record of its event (both kinds of delivery).
const INSERT_EVENT: &str = "INSERT INTO stripe_events (id, event_type, created, customer_id, \
     subscription_id, status) VALUES ($1, 'customer.subscription.updated', $2, $3, $4, 'active')";

/// What the clients do, one request each.
#[derive(Clone, Copy, Debug)]
enum Kind {
    SignUp,
    SessionUpdate,
    SessionCreate,
    UserUpdate,
    TokenLookup,
    Webhook,
    /// The API's delivery once m010's tables exist: its locks in its order.
    BilledWebhook,
    TierRead,
}

impl Kind {
    const ALL: [Kind; 8] = [
        Kind::SignUp,
        Kind::SessionUpdate,
        Kind::SessionCreate,
        Kind::UserUpdate,
        Kind::TokenLookup,
        Kind::Webhook,
        Kind::BilledWebhook,
        Kind::TierRead,
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::SignUp => "sign-up",
            Kind::SessionUpdate => "session update",
            Kind::SessionCreate => "session create",
            Kind::UserUpdate => "UPDATE users",
            Kind::TokenLookup => "token lookup",
            Kind::Webhook => "webhook delivery",
            Kind::BilledWebhook => "webhook delivery, m010's locks",
            Kind::TierRead => "tier read",
        }
    }

    /// Request number `n` (its ids are drawn from `n`).
    async fn run(self, db: &DatabaseConnection, users: i64, n: u64) -> Result<(), DbErr> {
        let backend = db.get_database_backend();
        let spread = (n.wrapping_mul(2_654_435_761) % users as u64) as i64 + 1;
        let stmt = |sql: &str, values: Vec<Value>| {
            Statement::from_sql_and_values(backend, placeholders(backend, sql), values)
        };
        // The API's user-row lock (`api::service::lock_user_rows`).
        let lock_user = match backend {
            DbBackend::Postgres => "SELECT id FROM users WHERE id = $1 FOR NO KEY UPDATE",
            _ => "SELECT id FROM users WHERE id = $1 FOR UPDATE",
        };
        // Request numbers are unique within a run, and each run has a fresh database.
        let unique = n.to_string();
        match self {
            Kind::SignUp => {
                db.execute_raw(stmt(
                    "INSERT INTO users (email) VALUES ($1)",
                    vec![format!("live{unique}@x.test").into()],
                ))
                .await?;
            }
            Kind::SessionUpdate | Kind::SessionCreate => {
                let txn = db.begin().await?;
                txn.execute_raw(stmt(lock_user, vec![spread.into()]))
                    .await?;
                let write = match self {
                    Kind::SessionUpdate => stmt(
                        "UPDATE synced_sessions SET payload = $1, updated_at = CURRENT_TIMESTAMP \
                         WHERE user_id = $2 AND client_id = $3",
                        vec![
                            "{\"tabs\":1}".into(),
                            spread.into(),
                            format!("c{spread}").into(),
                        ],
                    ),
                    _ => stmt(
                        "INSERT INTO synced_sessions (user_id, client_id, device_name, payload) \
                         VALUES ($1, $2, 'live', '{}')",
                        vec![spread.into(), format!("n{unique}").into()],
                    ),
                };
                txn.execute_raw(write).await?;
                txn.commit().await?;
            }
            Kind::UserUpdate => {
                db.execute_raw(stmt(
                    "UPDATE users SET updated_at = CURRENT_TIMESTAMP WHERE id = $1",
                    vec![spread.into()],
                ))
                .await?;
            }
            Kind::TokenLookup => {
                db.query_one_raw(stmt(
                    "SELECT user_id FROM api_tokens WHERE token_hash = $1",
                    vec![format!("tok{spread}").into()],
                ))
                .await?;
            }
            Kind::Webhook => {
                let txn = db.begin().await?;
                txn.execute_raw(stmt(
                    INSERT_EVENT,
                    vec![
                        format!("evt_live_{unique}").into(),
                        (n as i64).into(),
                        format!("cus_{spread}").into(),
                        format!("sub_{spread}").into(),
                    ],
                ))
                .await?;
                txn.execute_raw(stmt(lock_user, vec![spread.into()]))
                    .await?;
                txn.execute_raw(stmt(
                    "UPDATE users SET subscription_status = 'active' WHERE id = $1",
                    vec![spread.into()],
                ))
                .await?;
                txn.commit().await?;
            }
            Kind::BilledWebhook => {
                // A paying user's (every even id has a customer and a subscription), so
                // each delivery takes every lock the API's takes, in its order: the customer,
                // the subscription, then the user (`api::service::stripe_sync`).
                let paying = 2 * (1 + (spread - 1) % (users / 2).max(1));
                let (customer, subscription) = (format!("cus_{paying}"), format!("sub_{paying}"));
                let txn = db.begin().await?;
                txn.execute_raw(stmt(
                    INSERT_EVENT,
                    vec![
                        format!("evt_billed_{unique}").into(),
                        (n as i64).into(),
                        customer.clone().into(),
                        subscription.clone().into(),
                    ],
                ))
                .await?;
                txn.query_one_raw(stmt(
                    "SELECT user_id FROM stripe_customers WHERE customer_id = $1 FOR UPDATE",
                    vec![customer.into()],
                ))
                .await?;
                txn.query_one_raw(stmt(
                    "SELECT status FROM stripe_subscriptions WHERE subscription_id = $1 FOR UPDATE",
                    vec![subscription.clone().into()],
                ))
                .await?;
                txn.execute_raw(stmt(
                    "UPDATE stripe_subscriptions SET created = $1, updated_at = CURRENT_TIMESTAMP \
                     WHERE subscription_id = $2",
                    vec![(n as i64).into(), subscription.into()],
                ))
                .await?;
                txn.execute_raw(stmt(lock_user, vec![paying.into()]))
                    .await?;
                txn.query_all_raw(stmt(
                    "SELECT subscription_id, status, current_period_end FROM stripe_subscriptions \
                     WHERE customer_id IN (SELECT customer_id FROM stripe_customers \
                     WHERE user_id = $1 AND deleted_at IS NULL)",
                    vec![paying.into()],
                ))
                .await?;
                txn.execute_raw(stmt(
                    "UPDATE users SET subscription_status = 'active', \
                     updated_at = CURRENT_TIMESTAMP WHERE id = $1",
                    vec![paying.into()],
                ))
                .await?;
                txn.commit().await?;
            }
            Kind::TierRead => {
                db.query_one_raw(stmt(
                    "SELECT tier FROM user_tiers WHERE user_id = $1",
                    vec![spread.into()],
                ))
                .await?;
            }
        }
        Ok(())
    }
}

/// `$1`-style placeholders as the backend writes them.
fn placeholders(backend: DbBackend, sql: &str) -> String {
    if backend == DbBackend::Postgres {
        return sql.to_owned();
    }
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            while chars.peek().is_some_and(char::is_ascii_digit) {
                chars.next();
            }
            out.push('?');
        } else {
            out.push(c);
        }
    }
    out
}

/// Seeds what the schema has: users (every other one paying, where the billing columns
/// exist), sessions, tokens, an event per paying user, their customers and subscriptions.
async fn seed(db: &DatabaseConnection, size: Size) -> Result<(), String> {
    let backend = db.get_database_backend();
    let series = |n: i64| match backend {
        DbBackend::Postgres => (format!("generate_series(1, {n}) AS s(g)"), "g"),
        _ => (format!("seq_1_to_{n} AS s"), "s.seq"),
    };
    let (users, u) = series(size.users.max(1));
    let (sessions, s) = series(size.sessions.max(1));
    let mut statements = Vec::new();
    if has(db, "users", "id").await? {
        if has(db, "users", "stripe_customer_id").await? {
            statements.push(format!(
                "INSERT INTO users (email, stripe_customer_id, subscription_id, \
                 subscription_status) SELECT concat('u', {u}, '@x.test'), \
                 CASE WHEN {u} % 2 = 0 THEN concat('cus_', {u}) END, \
                 CASE WHEN {u} % 2 = 0 THEN concat('sub_', {u}) END, \
                 CASE WHEN {u} % 2 = 0 THEN 'active' ELSE 'none' END FROM {users}"
            ));
        } else {
            statements.push(format!(
                "INSERT INTO users (email) SELECT concat('u', {u}, '@x.test') FROM {users}"
            ));
        }
    }
    if has(db, "synced_sessions", "id").await? {
        statements.push(format!(
            "INSERT INTO synced_sessions (user_id, client_id, device_name, payload) \
             SELECT 1 + ({s} - 1) % {n}, concat('c', {s}), 'seed', '{{}}' FROM {sessions}",
            n = size.users.max(1)
        ));
    }
    if has(db, "api_tokens", "id").await? {
        statements.push(format!(
            "INSERT INTO api_tokens (user_id, token_hash) SELECT {u}, concat('tok', {u}) \
             FROM {users}"
        ));
    }
    if has(db, "stripe_events", "id").await? {
        statements.push(format!(
            "INSERT INTO stripe_events (id, event_type, created, customer_id, subscription_id, \
             status) SELECT concat('evt_', {u}), 'customer.subscription.updated', {u}, \
             concat('cus_', {u}), concat('sub_', {u}), 'active' FROM {users} WHERE {u} % 2 = 0"
        ));
    }
    if has(db, "stripe_customers", "customer_id").await? {
        statements.push(
            "INSERT INTO stripe_customers (customer_id, user_id) SELECT stripe_customer_id, id \
             FROM users WHERE stripe_customer_id IS NOT NULL"
                .to_owned(),
        );
    }
    if has(db, "stripe_subscriptions", "subscription_id").await? {
        statements.push(
            "INSERT INTO stripe_subscriptions (subscription_id, customer_id, status, created, \
             lifecycle_rank) SELECT subscription_id, stripe_customer_id, 'active', 1, 2 \
             FROM users WHERE subscription_id IS NOT NULL"
                .to_owned(),
        );
    }
    if backend == DbBackend::Postgres {
        // A production table has long been vacuumed and checkpointed; a bulk load has not.
        // Without this, the migration's first reads set the new rows' hint bits (writing
        // their pages again) and the seed's own checkpoint lands in the measured window: a
        // client's COMMIT then waited ~100 ms for the WAL flush behind the checkpoint's
        // fsyncs, with no lock involved (log_lock_waits at 30 ms logged none).
        statements.push("VACUUM ANALYZE".to_owned());
        statements.push("CHECKPOINT".to_owned());
    }
    for sql in statements {
        db.execute_unprepared(&sql)
            .await
            .map_err(|e| format!("seeding: {sql}: {e}"))?;
    }
    Ok(())
}

/// Whether `table` has `column` in the connection's schema.
async fn has(db: &DatabaseConnection, table: &str, column: &str) -> Result<bool, String> {
    let backend = db.get_database_backend();
    let schema = match backend {
        DbBackend::Postgres => "current_schema()",
        _ => "DATABASE()",
    };
    let sql = format!(
        "SELECT count(*) AS n FROM information_schema.columns WHERE table_schema = {schema} \
         AND table_name = '{table}' AND column_name = '{column}'"
    );
    let row = db
        .query_one_raw(Statement::from_string(backend, sql.clone()))
        .await
        .map_err(|e| format!("{sql}: {e}"))?;
    let n: i64 = row
        .map(|r| r.try_get("", "n"))
        .transpose()
        .map_err(|e| format!("{sql}: {e}"))?
        .unwrap_or(0);
    Ok(n > 0)
}
