//! Migrations as ordered, re-runnable steps.
//!
//! Every migration here is a list of [`Step`]s built for one backend. A step knows how to tell
//! that it has already happened ([`Probe`]), so running `up` or `down` again after a crash or a
//! failed statement finishes the job instead of failing on "duplicate column". The same list is
//! what `migration sql` prints, so the dry run shows exactly what would run.
//!
//! # How to write a migration
//!
//! Write it as operations (`operation.rs`; README "Operations"): the dialects turn them into
//! the steps below, with the probes and lock modes this engine needs. A migration can still
//! return its steps itself (none does today), as follows:
//!
//! 1. `sea-orm-cli migrate generate what_it_does` writes the file with
//!    `#[derive(DeriveMigrationName)] pub struct Migration;` and lists it at the end of
//!    `migrations()` in `lib.rs` (see there).
//! 2. `impl Planned for Migration`: `plan(backend, direction)` returns the steps for that
//!    backend, in order. Each [`Step`] has a summary (printed as it runs), a [`Mode`] (how its
//!    locks are bounded) and a [`Probe`] that holds once the step's work is done, so a re-run
//!    after a crash skips it. Build statements with sea-query (`.build(backend, &stmt)`) and
//!    raw SQL only for what sea-query cannot say (`.raw(sql)`, with a comment saying why).
//!    `required_tables` names the tables it builds on.
//! 3. Name every table through `crate::schema::table(backend, Foo::Table)` in builders
//!    (`Index::drop()` included: that is what puts the schema on the index) and
//!    `crate::schema::qualified(backend, "foo")` in raw SQL. On PostgreSQL they write the
//!    schema chosen with `-s` (default `public`); `plan` never needs to know it.
//! 4. `crate::planned_migration!(Migration);` implements `MigrationTrait` from the plan (in
//!    one transaction on PostgreSQL) and registers the plan for `migration sql`; write the
//!    `impl` by hand for `use_transaction() -> Some(false)`, as m006 and m008 do for
//!    `CONCURRENTLY` (an `Online` step in a transaction is refused: [`Refusal`]), and then
//!    call `crate::register_plan!(Migration);`.
//! 5. The doc comment says why each step is shaped as it is: the lock it takes on each
//!    backend and for how long (measured), and the backend quirks it works around.
//! 6. Tests: add it to the lists in `tests/migrations.rs` (down restores the schema, an
//!    interrupted run finishes) and, for a live-safety claim, to the kill test in
//!    `migration/tests/cli.rs`. A test there fails if its PostgreSQL SQL names a table
//!    without the schema. `migration/tests/plan_fixture.rs` pins the SQL it emits:
//!    regenerate the fixtures with `UPDATE_PLAN_FIXTURES=1` and review the diff.

use std::borrow::Cow;
use std::time::Duration;

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{
    ConnectionTrait, DbBackend, Statement, StatementBuilder, TransactionTrait, Value,
};

use crate::probe::Probe;
use crate::settings::LockSettings;

/// How a step's statements are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// On the connection the runner gives the migration (its transaction, where it opened one).
    Plain,
    /// In a short transaction of its own, under a lock timeout set on that same transaction
    /// (`SET LOCAL lock_timeout` on PostgreSQL, `lock_wait_timeout` on MySQL), retried with
    /// backoff and jitter when the lock is not granted in time. For steps that take a heavy
    /// table lock for a metadata-only change.
    LockTimed,
    /// A lock-timed step that copies `table` (MySQL's `ALGORITHM=COPY`): not retried blindly,
    /// since a copy that cannot take its final lock is thrown away and each retry copies the
    /// whole table again, blocking writes all the while. Before the copy starts, and until
    /// MIGRATION_LOCK_ATTEMPTS checks have passed, it waits while any transaction has the
    /// table open ([`table_in_use`]); then it makes one attempt.
    TableCopy { table: &'static str },
    /// One statement at a time, outside any transaction: `CREATE INDEX CONCURRENTLY` and
    /// friends, which PostgreSQL refuses to run in a transaction block.
    Online,
    /// A data copy into tables no one else uses yet, read from tables that serve traffic:
    /// each statement runs in a short `READ COMMITTED` transaction of its own (MySQL's
    /// `INSERT ... SELECT` then reads its source without shared next-key locks, so writes and
    /// inserts into the source never wait for it), and, with [`KeyRanges`], once per range
    /// of a key, so the rows a statement does lock (a foreign key's check locks each
    /// referenced row until the statement ends, on every backend) are held for one range
    /// only. Every statement must be re-runnable (skip rows already copied).
    Backfill { ranges: Option<KeyRanges> },
}

/// The ranges a [`Mode::Backfill`] step walks: the values of column `key` of `table` in
/// order, about `rows` rows at a time, from the smallest until no key is left past the last
/// range. Rows inserted meanwhile past that point fall in a range too, which is harmless
/// (the statements skip what is already copied; the code that inserts such rows writes the
/// new tables itself), and a walk that meets them runs that much longer. A range ends at a value, so every row holding that
/// value falls in the same range, however many there are: a statement that groups by the key
/// sees whole groups. Each statement names the range as [`RANGE_START`] and [`RANGE_END`]
/// (inclusive), which the runner binds as parameters. `key` should be indexed: each range
/// is found by reading `rows` entries of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRanges {
    pub table: &'static str,
    pub key: &'static str,
    pub kind: KeyKind,
    pub rows: i64,
}

/// The type of a [`KeyRanges`] key column.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Integer,
    Text,
}

/// Where a [`KeyRanges`] statement takes its range's first key.
pub const RANGE_START: &str = ":range_start";
/// Where a [`KeyRanges`] statement takes its range's last key (inclusive).
pub const RANGE_END: &str = ":range_end";

/// One unit of schema change, with the probe that tells it is already done.
#[derive(Clone, Debug)]
pub struct Step {
    pub summary: Cow<'static, str>,
    pub mode: Mode,
    /// Skip the step when this holds.
    pub done_when: Probe,
    /// What the step leaves in the catalog, where `done_when` cannot say (a `CREATE OR
    /// REPLACE VIEW` always runs, yet leaves a view): `migration status` checks it for
    /// applied migrations (`drift.rs`). `None`: `done_when` says it.
    pub expects: Option<Probe>,
    pub statements: Vec<String>,
}

impl Step {
    pub fn new(summary: impl Into<Cow<'static, str>>, mode: Mode, done_when: Probe) -> Self {
        Self {
            summary: summary.into(),
            mode,
            done_when,
            expects: None,
            statements: Vec::new(),
        }
    }

    /// Declares what the step leaves in the catalog when its `done_when` cannot tell
    /// ([`Step::expects`]). Not part of the plan's SQL, so not of its checksum.
    pub fn expecting(mut self, probe: Probe) -> Self {
        self.expects = Some(probe);
        self
    }

    /// What an applied step should have left in the catalog.
    pub fn expected(&self) -> &Probe {
        self.expects.as_ref().unwrap_or(&self.done_when)
    }

    /// Adds a statement built with sea-query, rendered for `backend`.
    pub fn build<S: StatementBuilder>(mut self, backend: DbBackend, stmt: &S) -> Self {
        self.statements.push(backend.build(stmt).to_string());
        self
    }

    /// Adds raw SQL, for what sea-query cannot say; callers explain why at the call site.
    pub fn raw(mut self, sql: impl Into<String>) -> Self {
        self.statements.push(sql.into());
        self
    }
}

/// PostgreSQL: drops an INVALID index named `index` that an interrupted `CREATE INDEX
/// CONCURRENTLY` left on `table`, and nothing else: the probe checks that the index is on our
/// table in our schema and invalid, and the statement names the schema. A valid index, or one
/// of the same name on another table, is left alone.
pub fn drop_invalid_leftover<T: IntoIden>(
    backend: DbBackend,
    summary: impl Into<Cow<'static, str>>,
    table: T,
    table_name: &'static str,
    index: &'static str,
) -> Step {
    Step::new(
        summary,
        Mode::Online,
        Probe::NoInvalidIndex {
            table: table_name,
            index,
        },
    )
    .build(
        backend,
        Index::drop()
            .name(index)
            .table(crate::schema::table(backend, table))
            .if_exists()
            .concurrently(),
    )
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// A migration whose `up` and `down` are step lists.
pub trait Planned {
    /// The steps for `backend`. Call it through [`plan_in`], which sets the schema that the
    /// statements name; called directly, they name `public`.
    fn plan(&self, backend: DbBackend, direction: Direction) -> Vec<Step>;

    /// Tables that must exist before the migration runs, in either direction: a missing one
    /// stops it before any step, with an error naming every missing table.
    fn required_tables(&self) -> &'static [&'static str] {
        &[]
    }

    /// Checksums (any backend's) of earlier plans of this migration that leave the same schema
    /// and data: a database that recorded one of them applied an equivalent plan, so it is
    /// not a changed migration, and the next `up` records the current sum. Only for a reshape
    /// that changes *how* (batches, lock modes), never *what*; anything else is an edit that
    /// `accept-checksum` must accept by hand.
    fn earlier_checksums(&self) -> &'static [&'static str] {
        &[]
    }

    /// The backends on which this migration cannot keep the API's requests within the live
    /// bar (no failed statement, no wait beyond the floor plus a bound), and why. The live
    /// harness (`bench migrations`, `tests/live_migrations.rs`) reports such a run without
    /// failing it, and checks that docs/migrations.md names it.
    fn not_live_safe(&self) -> &'static [NotLiveSafe] {
        &[]
    }
}

/// A migration's declaration that it cannot meet the live bar on `backend`.
#[derive(Clone, Copy, Debug)]
pub struct NotLiveSafe {
    pub backend: DbBackend,
    /// One line: what blocks, and for how long.
    pub why: &'static str,
}

/// `migration`'s steps, naming the PostgreSQL schema `schema` (ignored elsewhere).
pub fn plan_in<M: Planned + ?Sized>(
    migration: &M,
    backend: DbBackend,
    schema: &str,
    direction: Direction,
) -> Vec<Step> {
    crate::schema::planning_in(schema, || migration.plan(backend, direction))
}

/// What the engine takes from outside: how lock-timed steps wait for their locks, and where
/// the crash tests pause it. Read once, at the edge ([`EngineSettings::from_env`] in the CLI,
/// which hands it to [`configure`]), never by the engine while it runs.
#[derive(Clone, Debug)]
pub struct EngineSettings {
    pub lock: LockSettings,
    /// `<migration>:<up|down>:<n>`: pause before that statement (see [`PauseHook`]).
    pub pause_before: Option<String>,
}

pub const PAUSE_BEFORE_ENV: &str = "MIGRATION_PAUSE_BEFORE";

impl EngineSettings {
    pub fn from_env() -> Result<Self, DbErr> {
        Ok(Self {
            lock: LockSettings::from_env()?,
            pause_before: std::env::var(PAUSE_BEFORE_ENV).ok(),
        })
    }
}

static CONFIGURED: std::sync::OnceLock<EngineSettings> = std::sync::OnceLock::new();

/// Sets the settings every later run of a planned migration uses (SeaORM's runner calls
/// `MigrationTrait::up` with nothing but a connection, so they cannot be handed down). The
/// first call wins.
pub fn configure(settings: EngineSettings) {
    let _ = CONFIGURED.set(settings);
}

/// The settings given to [`configure`]; where nothing configured them (the API's embedded
/// run, the tests), the environment's, read now.
pub fn configured() -> Result<EngineSettings, DbErr> {
    match CONFIGURED.get() {
        Some(settings) => Ok(settings.clone()),
        None => EngineSettings::from_env(),
    }
}

/// A plan the engine refuses to start, before any of its steps runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// An [`Mode::Online`] or [`Mode::Backfill`] step on a connection inside a transaction:
    /// PostgreSQL refuses `CONCURRENTLY` there, a backfill's short transactions would become
    /// one long one, and the transaction would hold every earlier step's locks throughout.
    /// The migration must say `use_transaction() -> Some(false)`.
    OnlineInTransaction { migration: String, step: String },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::OnlineInTransaction { migration, step } => write!(
                f,
                "{migration}: step \"{step}\" must run outside any transaction, but the \
                 migration runs in one; its `impl MigrationTrait` must say \
                 `use_transaction() -> Some(false)`"
            ),
        }
    }
}

impl std::error::Error for Refusal {}

impl From<Refusal> for DbErr {
    fn from(refusal: Refusal) -> Self {
        DbErr::Migration(refusal.to_string())
    }
}

/// Whether `steps` may run on `db`: no [`Mode::Online`] step inside a transaction.
pub fn check_runnable(
    db: &SchemaManagerConnection<'_>,
    migration: &str,
    steps: &[Step],
) -> Result<(), Refusal> {
    let in_transaction = !matches!(db, SchemaManagerConnection::Connection(_));
    let own_transactions = |step: &&Step| matches!(step.mode, Mode::Online | Mode::Backfill { .. });
    match steps.iter().find(own_transactions) {
        Some(step) if in_transaction => Err(Refusal::OnlineInTransaction {
            migration: migration.to_owned(),
            step: step.summary.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Runs `steps` in order with the [`configured`] settings; see [`apply_with`].
pub async fn apply(
    manager: &SchemaManager<'_>,
    migration: &str,
    direction: Direction,
    steps: Vec<Step>,
) -> Result<(), DbErr> {
    apply_with(manager, migration, direction, steps, &configured()?).await
}

/// Runs `steps` in order, skipping those already done. The probes read the schema the
/// connection works in ([`crate::schema::of`]), which must be the one `steps` were planned in.
/// A plan it cannot run safely ([`check_runnable`]) is refused before its first step.
pub async fn apply_with(
    manager: &SchemaManager<'_>,
    migration: &str,
    direction: Direction,
    steps: Vec<Step>,
    engine: &EngineSettings,
) -> Result<(), DbErr> {
    let db = manager.get_connection();
    check_runnable(db, migration, &steps)?;
    let schema = crate::schema::of(db).await?.unwrap_or_default();
    let settings = &engine.lock;
    let total = steps.len();
    let mut statement_index = 0usize;
    for (i, step) in steps.iter().enumerate() {
        let position = format!("{migration} {} step {}/{total}", direction.as_str(), i + 1);
        crate::lock::verify_held(db).await?;
        if step.mode == Mode::Online
            && wait_for_index_builds(db, &schema, settings, &position).await?
        {
            // The wait may have been long: the lock must still be ours, and the probe below
            // reads the catalog as the other build left it.
            crate::lock::verify_held(db).await?;
        }
        if step.done_when.holds_in(db, &schema).await? {
            tracing::info!("{position}: {} (already done, skipped)", step.summary);
            statement_index += step.statements.len();
            continue;
        }
        tracing::info!("{position}: {}", step.summary);
        let pause = PauseHook {
            target: engine.pause_before.as_deref(),
            migration,
            direction: direction.as_str(),
            first_statement: statement_index,
        };
        let outcome = match step.mode {
            Mode::Plain | Mode::Online => run_plain(db, step, &pause).await,
            Mode::LockTimed => run_lock_timed(db, step, settings, &position, &pause).await,
            Mode::TableCopy { table } => {
                run_table_copy(db, step, table, settings, &position, &pause).await
            }
            Mode::Backfill { ranges } => {
                run_backfill(db, step, ranges, &schema, &position, &pause).await
            }
        };
        if let Err(err) = outcome {
            if !done_meanwhile(db, step, &err).await {
                if is_already_exists(&err) {
                    // Most likely the work of the migrator that took our lost lock: say so
                    // rather than show its side effect.
                    crate::lock::verify_held_elsewhere().await?;
                }
                return Err(err);
            }
            tracing::warn!(
                "{position}: done meanwhile by someone else ({}); carrying on",
                err.to_string().lines().next().unwrap_or_default()
            );
        }
        statement_index += step.statements.len();
    }
    Ok(())
}

async fn run_plain(
    db: &SchemaManagerConnection<'_>,
    step: &Step,
    pause: &PauseHook<'_>,
) -> Result<(), DbErr> {
    for (k, sql) in step.statements.iter().enumerate() {
        pause.check(k);
        db.execute_unprepared(sql).await?;
    }
    Ok(())
}

/// PostgreSQL: an index build another session runs on a table of `schema`, as `(pid, index)`
/// (`pg_stat_progress_create_index`; the index is named once its catalog row exists).
const PG_OTHER_INDEX_BUILDS: &str = "SELECT p.pid::bigint AS pid, \
     coalesce(i.relname, '(not yet named)') AS index FROM pg_stat_progress_create_index p \
     JOIN pg_class t ON t.oid = p.relid JOIN pg_namespace n ON n.oid = t.relnamespace \
     LEFT JOIN pg_class i ON i.oid = p.index_relid \
     WHERE n.nspname = $1 AND p.pid <> pg_backend_pid() LIMIT 1";

/// Before an [`Mode::Online`] step on PostgreSQL: waits (with backoff, up to
/// MIGRATION_LOCK_ATTEMPTS checks) while another session builds an index on a table of our
/// schema. Such a build is most likely a migrator that lost its lock in the middle of
/// `CREATE INDEX CONCURRENTLY`: its index is INVALID until the build ends, and dropping or
/// rebuilding it meanwhile would undo the other's work or fail half-way ("tuple concurrently
/// updated"). Once the build is over, the probes see what it left: a valid index (the step
/// is done) or an INVALID one nobody builds any more (safe to drop). Returns whether it
/// waited.
async fn wait_for_index_builds(
    db: &SchemaManagerConnection<'_>,
    schema: &str,
    settings: &LockSettings,
    position: &str,
) -> Result<bool, DbErr> {
    let backend = db.get_database_backend();
    if backend != DbBackend::Postgres {
        return Ok(false);
    }
    let mut check = 1u32;
    loop {
        let stmt = sea_orm_migration::sea_orm::Statement::from_sql_and_values(
            backend,
            PG_OTHER_INDEX_BUILDS,
            [schema.into()],
        );
        let Some(row) = db.query_one_raw(stmt).await? else {
            return Ok(check > 1);
        };
        let pid: i64 = row.try_get("", "pid")?;
        let index: String = row.try_get("", "index")?;
        if check >= settings.attempts {
            return Err(DbErr::Migration(format!(
                "{position}: session {pid} kept building index {index} in schema {schema} \
                 through {check} checks, so this step did not start: dropping or rebuilding an \
                 index while another session builds it would undo that work. If it is a \
                 migrator that lost its lock, let its build finish (or cancel it with \
                 `SELECT pg_cancel_backend({pid})`), then run the migration again."
            )));
        }
        let wait = settings.backoff(check);
        tracing::warn!(
            "{position}: session {pid} is building index {index} (check {check}/{}); not \
             starting until it ends, checking again in {} ms",
            settings.attempts,
            wait.as_millis()
        );
        crate::sleep(wait).await;
        check += 1;
    }
}

/// A [`Mode::Backfill`] step: each statement (once per key range, when it has ranges) in a
/// `READ COMMITTED` transaction of its own. The lock is verified before every range, so a
/// migrator that lost it stops within one range.
async fn run_backfill(
    db: &SchemaManagerConnection<'_>,
    step: &Step,
    ranges: Option<KeyRanges>,
    schema: &str,
    position: &str,
    pause: &PauseHook<'_>,
) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let Some(ranges) = ranges else {
        for (k, sql) in step.statements.iter().enumerate() {
            pause.check(k);
            run_read_committed(db, Statement::from_string(backend, sql.as_str())).await?;
        }
        return Ok(());
    };
    let walk = RangeWalk::new(backend, &ranges, schema);
    let count = walk.count(db).await?;
    let mut next = walk.first(db).await?;
    let mut done = 0i64;
    while let Some(start) = next {
        let end = walk.end_from(db, &start).await?;
        if done > 0 {
            crate::lock::verify_held(db).await?;
        }
        for (k, sql) in step.statements.iter().enumerate() {
            if done == 0 {
                pause.check(k);
            }
            run_read_committed(db, bind_range(backend, sql, &start, &end)).await?;
        }
        done += 1;
        if done % 100 == 0 {
            tracing::info!(
                "{position}: {done}/{count} ranges of about {} {}",
                ranges.rows,
                ranges.key
            );
        }
        next = walk.after(db, &end).await?;
    }
    Ok(())
}

/// The queries that find a [`KeyRanges`] step's ranges, in the schema the steps were planned
/// in. Each range is found where the previous one ended, by reading the key's index, so rows
/// inserted or deleted meanwhile never make a range skip a value present when it is found.
struct RangeWalk {
    backend: DbBackend,
    kind: KeyKind,
    rows: i64,
    table: String,
    key: &'static str,
}

impl RangeWalk {
    fn new(backend: DbBackend, ranges: &KeyRanges, schema: &str) -> Self {
        Self {
            backend,
            kind: ranges.kind,
            rows: Ord::max(ranges.rows, 1),
            table: crate::schema::planning_in(schema, || {
                crate::schema::qualified(backend, ranges.table)
            }),
            key: ranges.key,
        }
    }

    /// How many ranges, about (for the progress line).
    async fn count(&self, db: &SchemaManagerConnection<'_>) -> Result<i64, DbErr> {
        let sql = format!("SELECT COUNT(*) AS n FROM {}", self.table);
        let rows: i64 = match db
            .query_one_raw(Statement::from_string(self.backend, sql))
            .await?
        {
            Some(row) => row.try_get("", "n")?,
            None => 0,
        };
        Ok((rows + self.rows - 1) / self.rows)
    }

    /// The smallest key; `None` when the table has no row with one.
    async fn first(&self, db: &SchemaManagerConnection<'_>) -> Result<Option<Value>, DbErr> {
        let sql = format!(
            "SELECT MIN({key}) AS k FROM {table}",
            key = self.key,
            table = self.table
        );
        self.key_of(db, Statement::from_string(self.backend, sql))
            .await
    }

    /// The last key of the range that starts at `start`: the `rows`-th key from it, or the
    /// largest key when fewer rows are left.
    async fn end_from(
        &self,
        db: &SchemaManagerConnection<'_>,
        start: &Value,
    ) -> Result<Value, DbErr> {
        let sql = format!(
            "SELECT {key} AS k FROM {table} WHERE {key} >= {p} ORDER BY {key} \
             LIMIT 1 OFFSET {skip}",
            key = self.key,
            table = self.table,
            p = placeholder(self.backend, 1),
            skip = self.rows - 1,
        );
        let nth = Statement::from_sql_and_values(self.backend, sql, [start.clone()]);
        if let Some(end) = self.key_of(db, nth).await? {
            return Ok(end);
        }
        let sql = format!(
            "SELECT MAX({key}) AS k FROM {table}",
            key = self.key,
            table = self.table
        );
        Ok(self
            .key_of(db, Statement::from_string(self.backend, sql))
            .await?
            .unwrap_or_else(|| start.clone()))
    }

    /// The smallest key after `end`; `None` when there is none.
    async fn after(
        &self,
        db: &SchemaManagerConnection<'_>,
        end: &Value,
    ) -> Result<Option<Value>, DbErr> {
        let sql = format!(
            "SELECT MIN({key}) AS k FROM {table} WHERE {key} > {p}",
            key = self.key,
            table = self.table,
            p = placeholder(self.backend, 1),
        );
        self.key_of(
            db,
            Statement::from_sql_and_values(self.backend, sql, [end.clone()]),
        )
        .await
    }

    async fn key_of(
        &self,
        db: &SchemaManagerConnection<'_>,
        query: Statement,
    ) -> Result<Option<Value>, DbErr> {
        let Some(row) = db.query_one_raw(query).await? else {
            return Ok(None);
        };
        Ok(match self.kind {
            KeyKind::Integer => row.try_get::<Option<i64>>("", "k")?.map(Value::from),
            KeyKind::Text => row.try_get::<Option<String>>("", "k")?.map(Value::from),
        })
    }
}

/// `sql` with each [`RANGE_START`] and [`RANGE_END`] replaced by a parameter bound to
/// `start` or `end`, in the order they appear (MySQL's and SQLite's `?` are positional).
fn bind_range(backend: DbBackend, sql: &str, start: &Value, end: &Value) -> Statement {
    let mut text = String::with_capacity(sql.len());
    let mut values = Vec::new();
    let mut rest = sql;
    loop {
        let at_start = rest.find(RANGE_START);
        let at_end = rest.find(RANGE_END);
        let (at, name, value) = match (at_start, at_end) {
            (Some(s), Some(e)) if e < s => (e, RANGE_END, end),
            (Some(s), _) => (s, RANGE_START, start),
            (None, Some(e)) => (e, RANGE_END, end),
            (None, None) => break,
        };
        text.push_str(&rest[..at]);
        values.push(value.clone());
        text.push_str(&placeholder(backend, values.len()));
        rest = &rest[at + name.len()..];
    }
    text.push_str(rest);
    Statement::from_sql_and_values(backend, text, values)
}

/// The `n`-th (from 1) parameter's placeholder.
fn placeholder(backend: DbBackend, n: usize) -> String {
    match backend {
        DbBackend::Postgres => format!("${n}"),
        _ => "?".to_owned(),
    }
}

/// Plans each run of a statement for its own parameters, in the transaction it is set in.
pub const CUSTOM_PLANS: &str = "SET LOCAL plan_cache_mode = force_custom_plan";

/// `statement` alone in a `READ COMMITTED` transaction (SQLite has one writer and no levels: a
/// plain transaction).
async fn run_read_committed(
    db: &SchemaManagerConnection<'_>,
    statement: Statement,
) -> Result<(), DbErr> {
    use sea_orm_migration::sea_orm::IsolationLevel;
    let backend = db.get_database_backend();
    let isolation = match backend {
        DbBackend::Sqlite => None,
        _ => Some(IsolationLevel::ReadCommitted),
    };
    let txn = db.begin_with_config(isolation, None).await?;
    if statement.values.is_some() {
        if backend == DbBackend::Postgres {
            // The same text runs once per range on one connection, as a prepared statement:
            // PostgreSQL would fix it on a generic plan after five runs, chosen while the
            // table it checks (`NOT EXISTS` in the new table) was nearly empty, and that
            // plan scans it whole; m010's linked customers took 5× as long at 1M users.
            txn.execute_unprepared(CUSTOM_PLANS).await?;
        }
        txn.execute_raw(statement).await?;
    } else {
        txn.execute_unprepared(&statement.sql).await?;
    }
    txn.commit().await
}

/// A step that failed because what it creates "already exists" lost a race (to a migrator
/// whose lock overlapped ours, or to a person at a SQL prompt): if its probe now says it is
/// done, it is. The probe is asked again only then; a failed probe (PostgreSQL refuses
/// queries in a transaction that already failed) keeps the step's own error.
async fn done_meanwhile(db: &SchemaManagerConnection<'_>, step: &Step, err: &DbErr) -> bool {
    step.done_when != Probe::Never
        && is_already_exists(err)
        && step.done_when.holds(db).await.unwrap_or(false)
}

/// The server's own error inside `err`, if the server answered with one.
fn database_error(
    err: &DbErr,
) -> Option<&dyn sea_orm_migration::sea_orm::sqlx::error::DatabaseError> {
    use sea_orm_migration::sea_orm::RuntimeErr;
    match err {
        DbErr::Exec(RuntimeErr::SqlxError(e))
        | DbErr::Query(RuntimeErr::SqlxError(e))
        | DbErr::Conn(RuntimeErr::SqlxError(e)) => e.as_database_error(),
        _ => None,
    }
}

/// PostgreSQL `42701` duplicate_column, `42P07` duplicate_table (indexes too), `42710`
/// duplicate_object (constraints), `23505` (two sessions creating the same catalog row);
/// MySQL/MariaDB 1050 (table), 1060 (column), 1061 (key), 1826 (constraint, MariaDB and
/// foreign keys), 3822 (CHECK, MySQL); SQLite reports these in words only.
pub fn is_already_exists(err: &DbErr) -> bool {
    use sea_orm_migration::sea_orm::sqlx::mysql::MySqlDatabaseError;
    let Some(db_err) = database_error(err) else {
        return false;
    };
    if let Some(mysql) = db_err.try_downcast_ref::<MySqlDatabaseError>() {
        return matches!(mysql.number(), 1050 | 1060 | 1061 | 1826 | 3822);
    }
    if matches!(
        db_err.code().as_deref(),
        Some("42701" | "42P07" | "42710" | "23505")
    ) {
        return true;
    }
    let message = db_err.message();
    message.contains("already exists") || message.starts_with("duplicate column name")
}

async fn run_lock_timed(
    db: &SchemaManagerConnection<'_>,
    step: &Step,
    settings: &LockSettings,
    position: &str,
    pause: &PauseHook<'_>,
) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let in_force = lock_timeout_in_force(backend, settings.lock_timeout).as_millis();
    let mut attempt = 1u32;
    loop {
        if attempt > 1 {
            // Retries can go on for a minute: the lock must still be ours for each.
            crate::lock::verify_held(db).await?;
        }
        match attempt_lock_timed(db, step, settings, pause).await {
            Ok(()) => return Ok(()),
            Err(err) if is_lock_conflict(&err) && attempt < settings.attempts => {
                let wait = settings.backoff(attempt);
                tracing::warn!(
                    "{position}: lock not granted within {in_force} ms (attempt {attempt}/{}), retrying in {} ms",
                    settings.attempts,
                    wait.as_millis()
                );
                crate::sleep(wait).await;
                attempt += 1;
            }
            Err(err) if is_lock_conflict(&err) => {
                return Err(crate::error::raise(crate::Error::LockNotGranted {
                    position: position.to_owned(),
                    step: step.summary.to_string(),
                    attempts: attempt,
                    timeout_ms: in_force,
                }));
            }
            Err(err) => return Err(err),
        }
    }
}

/// One try of a lock-timed step, in a transaction of its own under the lock timeout.
async fn attempt_lock_timed(
    db: &SchemaManagerConnection<'_>,
    step: &Step,
    settings: &LockSettings,
    pause: &PauseHook<'_>,
) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    // One transaction pins one pooled connection, so the timeout below governs exactly the
    // statements that follow it.
    let txn = db.begin().await?;
    if let Some(sql) = lock_timeout_sql(backend, settings.lock_timeout) {
        txn.execute_unprepared(&sql).await?;
    }
    let row_lock_timeout = crate::dialect::of(backend).row_lock_timeout_sql(settings.lock_timeout);
    if let Some((sql, _)) = &row_lock_timeout {
        txn.execute_unprepared(sql).await?;
    }
    let mut outcome = Ok(());
    for (k, sql) in step.statements.iter().enumerate() {
        pause.check(k);
        outcome = txn.execute_unprepared(sql).await.map(|_| ());
        if outcome.is_err() {
            break;
        }
    }
    let resets = lock_timeout_reset_sql(backend)
        .into_iter()
        .chain(row_lock_timeout.map(|(_, reset)| reset));
    for sql in resets {
        // MySQL's settings are per session and the connection goes back to the pool.
        // Best effort: a failure here must not mask the statement's own error.
        let reset = txn.execute_unprepared(sql).await;
        if outcome.is_ok() {
            outcome = reset.map(|_| ());
        }
    }
    outcome?;
    txn.commit().await
}

/// A [`Mode::TableCopy`] step: waits (with backoff, up to MIGRATION_LOCK_ATTEMPTS checks) until
/// no transaction has `table` open, then copies once. The copy can still lose its final lock
/// to a transaction that opened the table during the copy; that is reported, not retried.
async fn run_table_copy(
    db: &SchemaManagerConnection<'_>,
    step: &Step,
    table: &str,
    settings: &LockSettings,
    position: &str,
    pause: &PauseHook<'_>,
) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    let in_force = lock_timeout_in_force(backend, settings.lock_timeout).as_millis();
    let mut check = 1u32;
    while table_in_use(db, table).await? == Some(true) {
        if check >= settings.attempts {
            return Err(DbErr::Migration(format!(
                "{position}: a transaction kept `{table}` open through {check} checks, so the \
                 table copy for \"{}\" was not started: it could not take its final lock while \
                 that transaction lasts. Find it with `SELECT * FROM information_schema.innodb_trx` \
                 or `SHOW PROCESSLIST`, end it, then run the migration again: finished steps are \
                 skipped. MIGRATION_LOCK_ATTEMPTS tunes how often this checks.",
                step.summary
            )));
        }
        let wait = settings.backoff(check);
        tracing::warn!(
            "{position}: a transaction has `{table}` open; not starting the table copy \
             (check {check}/{}), checking again in {} ms",
            settings.attempts,
            wait.as_millis()
        );
        crate::sleep(wait).await;
        crate::lock::verify_held(db).await?;
        check += 1;
    }
    match attempt_lock_timed(db, step, settings, pause).await {
        Err(err) if is_lock_conflict(&err) => Err(DbErr::Migration(format!(
            "{position}: the table copy for \"{}\" could not take its final lock on `{table}` \
             within {in_force} ms: a transaction opened the table while it was being copied. The \
             copy was thrown away and is not retried (each try copies the whole table again, and \
             writes wait for it). Run the migration again in a quieter moment; finished steps are \
             skipped.",
            step.summary
        ))),
        other => other,
    }
}

/// Whether some transaction has `table` open (holds a metadata lock on it): MariaDB's
/// `LOCK TABLES ... WRITE NOWAIT` fails at once if so, and otherwise holds the lock for no
/// longer than the round trip to `UNLOCK TABLES`, so it never queues readers or writers.
/// `None` when that cannot be asked (MySQL has no `NOWAIT` there; a user without the LOCK
/// TABLES privilege; PostgreSQL and SQLite, which copy no tables).
pub async fn table_in_use(
    db: &SchemaManagerConnection<'_>,
    table: &str,
) -> Result<Option<bool>, DbErr> {
    use sea_orm_migration::sea_orm::{RuntimeErr, sqlx::mysql::MySqlDatabaseError};
    let backend = db.get_database_backend();
    if backend != DbBackend::MySql {
        return Ok(None);
    }
    // A transaction pins one connection for LOCK and UNLOCK (LOCK TABLES commits it; the
    // COMMIT after is a no-op).
    let txn = db.begin().await?;
    let name = crate::schema::qualified(backend, table);
    let locked = txn
        .execute_unprepared(&format!("LOCK TABLES {name} WRITE NOWAIT"))
        .await;
    let _ = txn.execute_unprepared("UNLOCK TABLES").await;
    let _ = txn.commit().await;
    match locked {
        Ok(_) => Ok(Some(false)),
        Err(err) if is_lock_conflict(&err) => Ok(Some(true)),
        Err(DbErr::Exec(RuntimeErr::SqlxError(e)))
            if e.as_database_error()
                .and_then(|d| d.try_downcast_ref::<MySqlDatabaseError>())
                .is_some() =>
        {
            tracing::debug!("cannot check whether {name} is in use: {e}");
            Ok(None)
        }
        Err(err) => Err(err),
    }
}

/// The lock timeout the server applies for `asked` ([`crate::dialect::Dialect::lock_timeout_in_force`]).
pub fn lock_timeout_in_force(backend: DbBackend, asked: Duration) -> Duration {
    crate::dialect::of(backend).lock_timeout_in_force(asked)
}

/// The statement that bounds lock waits for the rest of the current transaction
/// ([`crate::dialect::Dialect::lock_timeout_sql`]).
pub fn lock_timeout_sql(backend: DbBackend, timeout: Duration) -> Option<String> {
    crate::dialect::of(backend).lock_timeout_sql(timeout)
}

/// Undoes [`lock_timeout_sql`] where it outlives the transaction
/// ([`crate::dialect::Dialect::lock_timeout_reset_sql`]).
pub fn lock_timeout_reset_sql(backend: DbBackend) -> Option<&'static str> {
    crate::dialect::of(backend).lock_timeout_reset_sql()
}

/// Whether `err` is a lock conflict worth retrying: PostgreSQL `55P03 lock_not_available`,
/// `40P01 deadlock_detected`, `40001 serialization_failure`; MySQL errors 1205 (lock wait
/// timeout) and 1213 (deadlock), which it files under generic SQLSTATEs; SQLite `SQLITE_BUSY`
/// (5) and `SQLITE_LOCKED` (6).
pub fn is_lock_conflict(err: &DbErr) -> bool {
    use sea_orm_migration::sea_orm::sqlx::mysql::MySqlDatabaseError;
    let Some(db_err) = database_error(err) else {
        return false;
    };
    if let Some(mysql) = db_err.try_downcast_ref::<MySqlDatabaseError>() {
        return matches!(mysql.number(), 1205 | 1213);
    }
    matches!(
        db_err.code().as_deref(),
        Some("55P03" | "40P01" | "40001" | "5" | "6" | "517" | "261")
    )
}

/// Stops the process before a chosen statement, so crash tests can SIGKILL it there.
///
/// `MIGRATION_PAUSE_BEFORE=<migration>:<up|down>:<n>` pauses before the n-th statement
/// (counting from 0 across the whole migration), prints `paused before ...` on stderr and
/// sleeps until killed, or until a line arrives on stdin (tests that change the database
/// under a paused migrator resume it that way; end of input keeps it asleep). The variable is
/// read once, into [`EngineSettings`].
pub(crate) struct PauseHook<'a> {
    /// [`EngineSettings::pause_before`].
    target: Option<&'a str>,
    migration: &'a str,
    /// `up`, `down`, or the phase of another command.
    direction: &'a str,
    first_statement: usize,
}

impl<'a> PauseHook<'a> {
    /// The hook of a command that is not a migration step (`fresh:drop:N`).
    pub(crate) fn at(target: Option<&'a str>, name: &'a str, phase: &'a str) -> Self {
        PauseHook {
            target,
            migration: name,
            direction: phase,
            first_statement: 0,
        }
    }
}

impl PauseHook<'_> {
    pub(crate) fn check(&self, offset: usize) {
        let Some(target) = self.target else {
            return;
        };
        let here = format!(
            "{}:{}:{}",
            self.migration,
            self.direction,
            self.first_statement + offset
        );
        if target == here {
            eprintln!("paused before {here}");
            let mut line = String::new();
            if std::io::stdin()
                .read_line(&mut line)
                .is_ok_and(|read| read > 0)
            {
                eprintln!("resumed before {here}");
                return;
            }
            loop {
                std::thread::sleep(Duration::from_secs(3600));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_messages_show_the_timeout_in_force() {
        let asked = Duration::from_millis(50);
        assert_eq!(
            lock_timeout_in_force(DbBackend::MySql, asked),
            Duration::from_secs(1)
        );
        assert_eq!(lock_timeout_in_force(DbBackend::Postgres, asked), asked);
    }

    #[test]
    fn mysql_lock_timeout_rounds_up_to_whole_seconds() {
        for (ms, seconds) in [
            (0, 1),
            (1, 1),
            (50, 1),
            (1000, 1),
            (1001, 2),
            (1900, 2),
            (2000, 2),
        ] {
            assert_eq!(
                lock_timeout_sql(DbBackend::MySql, Duration::from_millis(ms)).as_deref(),
                Some(format!("SET SESSION lock_wait_timeout = {seconds}").as_str()),
                "{ms} ms"
            );
        }
        assert_eq!(
            lock_timeout_sql(DbBackend::Postgres, Duration::from_millis(1900)).as_deref(),
            Some("SET LOCAL lock_timeout = '1900ms'")
        );
    }
}
