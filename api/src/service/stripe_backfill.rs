//! `billing stripe-sync`: brings the links between users and Stripe customers, and the billing
//! columns, back to what Stripe says. For right after m006 on an existing user base, after
//! missed webhooks, and nightly as a safety net (README, "stripe-sync").
//!
//! Stripe is read through its list endpoints (all customers, all completed Checkout Sessions,
//! then all subscriptions with `status=all`, 100 a page), so a million customers cost about
//! thirty thousand requests, not millions; only customers we know of that the list no longer
//! shows are asked for one by one (Stripe lists no deleted customer). Every customer and
//! session is read before anything is written: a rejected key, or one of the other mode,
//! fails with nothing changed, and the e-mail match sees every customer that shares an
//! address.
//!
//! Linking, for a customer no user has yet, in this order:
//! 1. the user its completed Checkout Sessions name in `client_reference_id` (ours: checkout
//!    puts the user's id there). This is the payer's own act, so it links a returning
//!    customer's second customer, and customers orphaned before m010, whatever else the
//!    user has;
//! 2. the user its `metadata.user_id` names;
//! 3. with `--link-by-email` only: the one user whose e-mail equals the customer's, when no
//!    other customer has that e-mail and the user has no customer yet. Both sides are
//!    compared lower-cased in Rust: database collations disagree (SQLite's `lower()` only
//!    folds ASCII, MariaDB's depend on the column). Opt-in, because it trusts `users.email`
//!    as its owner's: where e-mails are not verified, whoever registers a payer's address
//!    would get the payer's subscription.
//!
//! Anything less certain is left alone and counted. A customer left unlinked that has a live
//! subscription (`active`, `trialing`, `past_due`) is a payer without Pro: a failure, named in
//! the summary.
//!
//! Writes go through the webhook's own path (`stripe_sync`): a subscription fetched when
//! Stripe's clock said t counts as an event created just before t − [`CLOCK_MARGIN`], so a
//! webhook created later still wins, an older one cannot roll it back, and a snapshot already
//! stored changes nothing. When the stored state differs from Stripe's and is dated later, the
//! subscription is read again; if it still differs, that is a failure, never `unchanged`.
//!
//! Writes overlap the paging, a page at a time: the links of up to [`LINKS_A_PAGE`]
//! customers, or the subscriptions of one page of Stripe's list, are one task, in one
//! transaction on its own pooled connection (`--writers`, at most the pool's size less one),
//! while the next page is read. A page writes through `stripe_sync`'s page path
//! (`link_customers`, `apply_fetched_subscriptions`): the webhook's rule for each row, the
//! state writing them one at a time would leave, in a few statements a page; its rows are
//! locked by table (customers, subscriptions, users), each table in the order of the ids, so
//! two pages, or a page and a webhook, do not wait for each other in a cycle (a deadlock a
//! server reports anyway starts the page again). A page the
//! database refuses, or whose task panics, is written again a row at a time, each in its own
//! transaction and task, so a failed row (counted and named) loses no other. A write that
//! gave up waiting for a lock (`DB_LOCK_TIMEOUT_MS`; most often another write of this run on
//! the same customer or user) is started again, a few times, with growing pauses: a webhook
//! that times out is retried by Stripe, a sync write only by the next run. What stays
//! ordered: every link of one step (Checkout, then metadata, then e-mail) ends before the next
//! step starts, two links to one user are never in one page nor in flight together (Stripe's
//! order decides the user's last linked customer, as before), and the subscriptions are read
//! only once every link has ended. Who owns a subscription's customer is read from the
//! database, one query a page, when the page is applied. With a pool of one connection
//! (SQLite, or `DB_MAX_CONNECTIONS=1`) there is no connection to spare for the reads, so each
//! write ends before the run goes on: writes one at a time, never in flight while a page is
//! read.
//!
//! Memory, what a full run holds besides the page in hand (dropped once read):
//! * the id of every customer the database holds as live, from the start until the linking
//!   has ended (those the list shows are struck off and freed, but the set's table keeps the
//!   size it had at the start);
//! * per customer no user has, its id and `metadata.user_id`, and its e-mail only with
//!   `--link-by-email` and no `metadata.user_id`;
//! * with `--link-by-email`, a 64-bit hash and a count per distinct e-mail of every customer
//!   at Stripe, the id of every user who has a customer, and the users whose e-mail some
//!   unlinked customer has;
//! * when some customer is unlinked, a (customer, user) pair per completed Checkout Session
//!   that names both, for every session at Stripe (not only the unlinked customers'), with
//!   repeats until the first lookup sorts and deduplicates them;
//! * up to `--writers` pages in flight, a page of links being gathered, and the ids of
//!   unlinked payers.
//!
//! [`CLOCK_MARGIN`]: crate::stripe::client::CLOCK_MARGIN

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use entity::{SubscriptionStatus, stripe_customers, stripe_subscriptions, users};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::backoff::equal_jitter;
use crate::db::Db;
use crate::stripe::stored_time::stored_time;
use serde_json::Value;

use crate::error::ApiError;
use crate::service::stripe_sync::{self, Grown, LinkOutcome, Outcome};
use crate::stripe::client::{ApiKey, Listing, StripeClient, StripeError};
use crate::stripe::event::{
    MAX_ID_CHARS, Snapshot, UnpaidRun, snapshot_from_subscription, storable,
};
use crate::stripe::mode::{ModeError, StripeMode};
use crate::stripe::prices::ProPrices;

/// `billing stripe-sync` flags. The key is read from the environment in preference; it is
/// never shown (`hide_env_values`, and `ApiKey` has no readable `Debug`).
#[derive(clap::Args, Clone, Debug)]
pub struct SyncArgs {
    /// Stripe secret key (sk_live_..., sk_test_...), or a restricted key (rk_...) that may read
    /// customers, Checkout Sessions, subscriptions and invoices; its prefix is the mode the run
    /// reads.
    /// Prefer the environment: a flag shows in the process list.
    #[arg(
        long = "stripe-api-key",
        env = "STRIPE_API_KEY",
        hide_env_values = true
    )]
    pub api_key: Option<ApiKey>,
    /// Stripe's API root.
    #[arg(
        long = "stripe-api-base",
        env = "STRIPE_API_BASE",
        default_value = "https://api.stripe.com"
    )]
    pub api_base: String,
    /// Sync one customer only (cus_...): its link and its subscriptions.
    #[arg(long, value_name = "CUSTOMER_ID")]
    pub customer: Option<String>,
    /// Requests per second to Stripe, retries included (Stripe allows 25 in test mode,
    /// 100 live).
    #[arg(
        long,
        env = "STRIPE_MAX_REQUESTS_PER_SEC",
        default_value_t = 20,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub max_requests_per_sec: u32,
    /// Also link a customer to the one user whose e-mail is the customer's (after Checkout
    /// Sessions and metadata.user_id). Only where users' e-mails are verified: it trusts
    /// users.email as its owner's.
    #[arg(long)]
    pub link_by_email: bool,
    /// Database writes in flight at once, each in its own transaction on its own pooled
    /// connection, while the next page is read. Capped at DB_MAX_CONNECTIONS − 1 (one
    /// connection stays free for the reads between pages); with a pool of one connection
    /// (SQLite, or DB_MAX_CONNECTIONS=1) writes run one at a time, between the reads.
    #[arg(
        long,
        env = "STRIPE_SYNC_WRITERS",
        default_value_t = 8,
        value_parser = clap::value_parser!(u32).range(1..=256)
    )]
    pub writers: u32,
}

impl SyncArgs {
    /// The writes in flight at once on a pool of `pool_size` connections; 0 when the pool
    /// has one connection, which the writes and the reads between pages would share: then
    /// each write ends before the run reads on ([`sync`]).
    pub fn writers_within(&self, pool_size: u32, backend: sea_orm::DbBackend) -> usize {
        let pool_size = match backend {
            // `startup` opens SQLite with one connection (one writer at a time).
            sea_orm::DbBackend::Sqlite => 1,
            _ => pool_size,
        };
        // One connection stays free for the reads between pages.
        self.writers.min(pool_size.saturating_sub(1)) as usize
    }
}

impl SyncArgs {
    /// The client, once the flags are known to be usable (before the database is touched).
    /// `deployment` is the deployment's STRIPE_MODE (`--stripe-mode`): a key of the other mode
    /// would write one world's subscriptions over the other's, so it is refused.
    pub fn client(&self, deployment: Option<StripeMode>) -> Result<StripeClient, SyncError> {
        let key = self
            .api_key
            .clone()
            .filter(|key| !key.is_empty())
            .ok_or(SyncError::NoKey)?;
        if let Some(customer) = &self.customer
            && !is_customer_id(customer)
        {
            return Err(SyncError::BadCustomer(customer.clone()));
        }
        let mode = key.mode().ok_or(SyncError::KeyMode)?;
        // The server resolves its mode the same way (`mode::resolve`): STRIPE_MODE, which must
        // agree with the key, else the key's own.
        if let Some(setting) = deployment
            && setting != mode
        {
            return Err(ModeError::Conflict { setting, key: mode }.into());
        }
        Ok(StripeClient::new(
            &self.api_base,
            key,
            mode,
            self.max_requests_per_sec,
        )?)
    }
}

/// Subscriptions are read with their latest invoice expanded: a past-due stretch whose
/// events were lost is dated by that invoice's finalization, when Stripe tried the charge
/// (`Snapshot::unpaid_invoice_since`), not by the time of this run. Stripe expands a field
/// of a list's items as `data.<field>` (docs.stripe.com/expand).
const EXPAND_LIST: (&str, &str) = ("expand[]", "data.latest_invoice");
const EXPAND_ONE: (&str, &str) = ("expand[]", "latest_invoice");

fn is_customer_id(id: &str) -> bool {
    id.len() <= 255
        && id.strip_prefix("cus_").is_some_and(|rest| {
            !rest.is_empty() && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(
        "STRIPE_API_KEY is not set: a Stripe secret key (sk_...) or a restricted key (rk_...) \
         that may read customers, Checkout Sessions, subscriptions and invoices"
    )]
    NoKey,
    #[error(
        "STRIPE_API_KEY is neither a live nor a test key: it must start with sk_live_, \
         rk_live_, sk_test_ or rk_test_"
    )]
    KeyMode,
    #[error(transparent)]
    Mode(#[from] ModeError),
    #[error("--customer {0:?} is not a Stripe customer id (cus_...)")]
    BadCustomer(String),
    #[error(transparent)]
    Stripe(#[from] StripeError),
    #[error("database: {0}")]
    Database(#[from] ApiError),
    /// An invariant of the run broke: it stops with an error rather than wait forever.
    #[error(
        "a link to user {0} waits for another that is no longer in flight (a bug in stripe-sync); \
         stopped, the writes already made are kept"
    )]
    LinkGuardLeft(i64),
}

/// What a run found and did. `failed` counts customers and subscriptions that could not be
/// written; the run goes on past them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub customers_seen: u64,
    pub already_linked: u64,
    pub linked_by_checkout: u64,
    pub linked_by_metadata: u64,
    pub linked_by_email: u64,
    pub ambiguous: u64,
    pub unmatched: u64,
    /// Customers we had as live that Stripe has deleted, marked deleted now.
    pub deleted: u64,
    pub subscriptions_seen: u64,
    pub updated: u64,
    pub unchanged: u64,
    /// Subscriptions of customers no user is linked to.
    pub skipped: u64,
    pub failed: u64,
    /// Customers with a live subscription that no user is linked to (each also counted in
    /// `failed`): payers who do not get Pro.
    pub unlinked_payers: Vec<String>,
}

impl Tally {
    /// Each count by its field's name, for stripe-sync's progress metric.
    pub fn counts(&self) -> [(&'static str, u64); 13] {
        [
            ("customers_seen", self.customers_seen),
            ("already_linked", self.already_linked),
            ("linked_by_checkout", self.linked_by_checkout),
            ("linked_by_metadata", self.linked_by_metadata),
            ("linked_by_email", self.linked_by_email),
            ("ambiguous", self.ambiguous),
            ("unmatched", self.unmatched),
            ("deleted", self.deleted),
            ("subscriptions_seen", self.subscriptions_seen),
            ("updated", self.updated),
            ("unchanged", self.unchanged),
            ("skipped", self.skipped),
            ("failed", self.failed),
        ]
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} customer(s) seen: {} already linked, {} linked by checkout, \
             {} linked by metadata.user_id, {} linked by e-mail, {} ambiguous, {} unmatched, \
             {} deleted at Stripe; {} subscription(s) seen: {} updated, {} unchanged, \
             {} skipped (customer not linked); {} failed",
            self.customers_seen,
            self.already_linked,
            self.linked_by_checkout,
            self.linked_by_metadata,
            self.linked_by_email,
            self.ambiguous,
            self.unmatched,
            self.deleted,
            self.subscriptions_seen,
            self.updated,
            self.unchanged,
            self.skipped,
            self.failed
        )?;
        if !self.unlinked_payers.is_empty() {
            const SHOWN: usize = 20;
            let shown = self.unlinked_payers.iter().take(SHOWN).cloned();
            let mut names = shown.collect::<Vec<_>>().join(", ");
            if self.unlinked_payers.len() > SHOWN {
                names.push_str(&format!(
                    " and {} more (see above)",
                    self.unlinked_payers.len() - SHOWN
                ));
            }
            write!(f, "; live subscription, no user: {names}")?;
        }
        Ok(())
    }
}

/// What a run has to say while it goes.
pub enum Note<'a> {
    /// The counts so far (every few seconds, and after each phase).
    Progress(&'a Tally),
    /// A customer left alone, or a write that failed: one line for support.
    Customer { customer: &'a str, detail: String },
}

/// Syncs every customer, or only `only`; links by e-mail too when `link_by_email`. At most
/// `writers` writes are in flight at once, each in its own transaction on its own pooled
/// connection (keep it under the pool's size: the reads between pages need one too); with
/// `writers` 0, each write ends before the run goes on (a pool of one connection).
///
/// When the run stops on an error, the writes already started still end, and the counts
/// with them are noted (`Note::Progress`, unless nothing was counted yet) before the error is
/// returned.
#[tracing::instrument(level = "debug", skip_all, fields(only = only))]
pub async fn sync(
    db: &Db,
    client: &mut StripeClient,
    only: Option<&str>,
    link_by_email: bool,
    writers: usize,
    prices: &ProPrices,
    mut note: impl FnMut(Note<'_>),
) -> Result<Tally, SyncError> {
    let mut run = Run {
        db,
        link_by_email,
        prices,
        tally: Tally::default(),
        linked_users: HashSet::new(),
        writes: Writes::new(writers),
        pending: Vec::new(),
        growth: Default::default(),
        progress: Throttle::default(),
        note: &mut note,
    };
    let result = match only {
        Some(customer) => run.one(client, customer).await,
        None => run.all(client).await,
    };
    // Whatever ended the run, the writes already started (or gathered) finish and are
    // counted.
    let drained = run.drain(client).await;
    if let Err(err) = result.and(drained) {
        // The writes made before the error (those of the page that failed included) are
        // in the database: the last counts shown say so, not those of the last progress
        // line, which may be seconds older. A run refused before it counted anything (a
        // rejected key) says only why.
        if run.tally != Tally::default() {
            run.progress(true);
        }
        return Err(err);
    }
    Ok(run.tally)
}

/// A Stripe customer as linking needs it, and no more: a first run holds every customer no
/// user has until all of them and their Checkout Sessions are read.
struct Customer {
    id: Box<str>,
    /// Trimmed and lower-cased; kept only when linking by e-mail.
    email: Option<Box<str>>,
    metadata_user: Option<Box<str>>,
}

impl Customer {
    fn from_object(object: &Value, keep_email: bool) -> Option<Self> {
        fn text(v: Option<&Value>) -> Option<&str> {
            v.and_then(Value::as_str).map(str::trim)
        }
        Some(Self {
            id: text(object.get("id"))?.into(),
            email: text(object.get("email"))
                .filter(|e| keep_email && !e.is_empty())
                .map(|e| e.to_lowercase().into_boxed_str()),
            metadata_user: text(object.pointer("/metadata/user_id"))
                .filter(|u| !u.is_empty())
                .map(Box::from),
        })
    }
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Checkout,
    Metadata,
    Email,
}

/// (customer, user) for every completed Checkout Session naming both, sorted once read: a
/// flat list costs a third of a map of lists at a million sessions.
#[derive(Default)]
struct Checkouts {
    pairs: Vec<(Box<str>, i64)>,
    sorted: bool,
}

impl Checkouts {
    /// Adds what one Checkout Session says: its customer and the user it was opened for.
    /// Sessions without a customer (a one-off payment by a guest) or with a reference that is
    /// not a user id (another integration's) say nothing.
    fn add(&mut self, session: &Value) {
        let customer = match session.get("customer") {
            Some(Value::String(id)) => Some(id.as_str()),
            // Expanded.
            Some(Value::Object(o)) => o.get("id").and_then(Value::as_str),
            _ => None,
        };
        let user = session
            .get("client_reference_id")
            .and_then(Value::as_str)
            .and_then(|r| r.trim().parse::<i64>().ok());
        if let (Some(customer), Some(user)) = (customer, user) {
            self.pairs.push((customer.into(), user));
            self.sorted = false;
        }
    }

    /// The users the customer's sessions name, each once.
    fn users(&mut self, customer: &str) -> Vec<i64> {
        if !self.sorted {
            self.pairs.sort_unstable();
            self.pairs.dedup();
            self.pairs.shrink_to_fit();
            self.sorted = true;
        }
        let start = self.pairs.partition_point(|(c, _)| &**c < customer);
        self.pairs[start..]
            .iter()
            .take_while(|(c, _)| &**c == customer)
            .map(|(_, user)| *user)
            .collect()
    }
}

/// Stripe's statuses of a subscription that is paid for, or is being: its customer is a payer.
fn is_live(stripe_status: &str) -> bool {
    matches!(stripe_status, "active" | "trialing" | "past_due")
}

/// What one write found, for the run to count (and, for a subscription whose stored state
/// differs, to read again).
enum Written {
    /// A page of links (or one), and what each did, in its order: `Err` says why it failed.
    Links {
        links: Arc<[PendingLink]>,
        results: Vec<Result<LinkOutcome, String>>,
    },
    /// A page of subscriptions (or one), and what applying each found, in its order.
    Apply {
        page: Arc<[Snapshot]>,
        attempts: Vec<Attempt>,
    },
}

/// What applying a fetched subscription found.
enum Attempt {
    Updated,
    Unchanged,
    /// Applied, but the customer has no user (anymore).
    Skipped,
    /// The stored state differs from Stripe's and is dated later (shown).
    Differs(String),
    Failed(String),
}

/// Applies a fetched subscription through the webhook's path, and compares the stored state
/// when that path changed nothing.
async fn attempt(db: &Db, snapshot: &Snapshot, as_of: i64) -> Attempt {
    match contended(|| stripe_sync::apply_fetched_subscription(db, snapshot, as_of)).await {
        Ok(Outcome::Applied) => Attempt::Updated,
        Ok(Outcome::Duplicate) => match stored_differs(db, snapshot).await {
            Ok(None) => Attempt::Unchanged,
            Ok(Some(stored)) => Attempt::Differs(stored),
            Err(err) => Attempt::Failed(format!("comparing with the stored state failed: {err}")),
        },
        Ok(_) => Attempt::Skipped,
        Err(err) => Attempt::Failed(format!("not applied: {err}")),
    }
}

/// Applies a page of fetched subscriptions (or one) as a write of its own, and, when the
/// page fails as one write (the database refuses it, or its task dies), each of them alone,
/// in its own transaction and task: one bad subscription then fails alone, the rest are kept.
async fn apply_page(
    db: Db,
    hooks: hooks::WriteHooks,
    page: Arc<[Snapshot]>,
    as_of: i64,
) -> Vec<Attempt> {
    let targets = page.iter().map(|s| s.subscription.clone()).collect();
    let whole = isolated(&hooks, targets, {
        let (db, page) = (db.clone(), Arc::clone(&page));
        async move { attempt_page(&db, &page, as_of).await }
    })
    .await;
    let why = match whole {
        Ok(Ok(attempts)) => return attempts,
        Ok(Err(err)) => err.to_string(),
        Err(how) if page.len() == 1 => {
            return vec![Attempt::Failed(format!(
                "its task {how}; nothing of it was written"
            ))];
        }
        Err(how) => format!("its task {how}"),
    };
    tracing::warn!(
        why,
        subscriptions = page.len(),
        "a page of subscriptions failed as one write; applying them one at a time"
    );
    let mut attempts = Vec::with_capacity(page.len());
    for snapshot in page.iter() {
        let one = isolated(&hooks, vec![snapshot.subscription.clone()], {
            let (db, snapshot) = (db.clone(), snapshot.clone());
            async move { attempt(&db, &snapshot, as_of).await }
        })
        .await;
        attempts.push(one.unwrap_or_else(|how| {
            Attempt::Failed(format!("its task {how}; nothing of it was written"))
        }));
    }
    attempts
}

/// Links a page of customers (or one) as a write of its own, and each alone when the page
/// fails as one write, as [`apply_page`] does.
async fn link_page(
    db: Db,
    hooks: hooks::WriteHooks,
    links: Arc<[PendingLink]>,
) -> Vec<Result<LinkOutcome, String>> {
    let failed = |link: &PendingLink, why: &str| format!("linking to user {}{why}", link.user);
    let targets = links.iter().map(|l| l.customer.to_string()).collect();
    let whole = isolated(&hooks, targets, {
        let db = db.clone();
        let pairs: Vec<(i64, String)> = links
            .iter()
            .map(|l| (l.user, l.customer.to_string()))
            .collect();
        async move {
            match &pairs[..] {
                [(user, customer)] => {
                    contended(|| stripe_sync::link_customer(&db, *user, customer))
                        .await
                        .map(|outcome| vec![outcome])
                }
                pairs => contended(|| stripe_sync::link_customers(&db, pairs)).await,
            }
        }
    })
    .await;
    let why = match whole {
        Ok(Ok(outcomes)) => return outcomes.into_iter().map(Ok).collect(),
        Ok(Err(err)) if links.len() == 1 => {
            return vec![Err(failed(&links[0], &format!(" failed: {err}")))];
        }
        Err(how) if links.len() == 1 => {
            return vec![Err(failed(
                &links[0],
                &format!(": its task {how}; nothing of it was written"),
            ))];
        }
        Ok(Err(err)) => err.to_string(),
        Err(how) => format!("its task {how}"),
    };
    tracing::warn!(
        why,
        links = links.len(),
        "a page of links failed as one write; linking them one at a time"
    );
    let mut results = Vec::with_capacity(links.len());
    for link in links.iter() {
        let one = isolated(&hooks, vec![link.customer.to_string()], {
            let (db, user, customer) = (db.clone(), link.user, link.customer.clone());
            async move { contended(|| stripe_sync::link_customer(&db, user, &customer)).await }
        })
        .await;
        results.push(match one {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(err)) => Err(failed(link, &format!(" failed: {err}"))),
            Err(how) => Err(failed(
                link,
                &format!(": its task {how}; nothing of it was written"),
            )),
        });
    }
    results
}

/// Runs `write` as a task of its own, after the test hooks of `targets`, so that a panic in it
/// (a defect, or a test's hook) ends that task alone. `Err` says how the task ended.
async fn isolated<T, F>(
    hooks: &hooks::WriteHooks,
    targets: Vec<String>,
    write: F,
) -> Result<T, &'static str>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let hooks = hooks.clone();
    let task = async move {
        hooks.before_write(&targets).await;
        write.await
    };
    // The run's span goes with the task: its logs (and a panic's) say which run.
    tokio::spawn(task.instrument(tracing::Span::current()))
        .await
        .map_err(|err| {
            if err.is_panic() {
                "panicked"
            } else {
                "was cancelled"
            }
        })
}

/// Applies a page of fetched subscriptions in one write (`stripe_sync`'s page path: the same
/// rule, a few statements a page), and compares the stored states where it changed nothing.
/// `Err` when the page failed as one write.
async fn attempt_page(db: &Db, page: &[Snapshot], as_of: i64) -> Result<Vec<Attempt>, ApiError> {
    if let [one] = page {
        return Ok(vec![attempt(db, one, as_of).await]);
    }
    let outcomes = contended(|| stripe_sync::apply_fetched_subscriptions(db, page, as_of)).await?;
    let unchanged: Vec<&str> = page
        .iter()
        .zip(&outcomes)
        .filter(|(_, outcome)| **outcome == Outcome::Duplicate)
        .map(|(snapshot, _)| snapshot.subscription.as_str())
        .collect();
    let stored = stripe_sync::stored_subscriptions(db, &unchanged).await;
    Ok(page
        .iter()
        .zip(outcomes)
        .map(|(snapshot, outcome)| match outcome {
            Outcome::Applied => Attempt::Updated,
            Outcome::Duplicate => match &stored {
                Ok(stored) => match differs(stored.get(snapshot.subscription.as_str()), snapshot) {
                    None => Attempt::Unchanged,
                    Some(shown) => Attempt::Differs(shown),
                },
                Err(err) => {
                    Attempt::Failed(format!("comparing with the stored state failed: {err}"))
                }
            },
            _ => Attempt::Skipped,
        })
        .collect())
}

/// Tries of one sync write that gives up waiting for a lock (`ApiError::Busy`), before it
/// counts as failed.
const LOCK_ATTEMPTS: u32 = 6;
/// The pause after the first lock timeout; doubled after each next one, up to
/// [`MAX_LOCK_BACKOFF`].
const FIRST_LOCK_BACKOFF: Duration = Duration::from_millis(100);
const MAX_LOCK_BACKOFF: Duration = Duration::from_secs(2);

/// Runs one write (a `stripe_sync` function, its own transaction) and starts it again when it
/// gave up waiting for a lock: PostgreSQL's `lock_not_available` (55P03), MySQL's lock wait
/// timeout (1205), or deadlocks past `stripe_sync`'s own quick retries, all
/// [`ApiError::Busy`]. Several writes of one run in flight together queue on the same
/// customer's or user's row, and the last of a long queue can wait past
/// `DB_LOCK_TIMEOUT_MS`; the webhook leaves such a retry to Stripe's redelivery, which a sync
/// has none of. Bounded: [`LOCK_ATTEMPTS`] tries, pauses of 0.1 s doubling to 2 s, with
/// jitter so that writes that timed out together do not retry together.
async fn contended<T, W, F>(mut write: W) -> Result<T, ApiError>
where
    W: FnMut() -> F,
    F: std::future::Future<Output = Result<T, ApiError>>,
{
    let mut attempt = 1;
    loop {
        match write().await {
            Err(ApiError::Busy(Some(err))) if attempt < LOCK_ATTEMPTS => {
                tracing::debug!(error = %err, attempt, "stripe-sync write waited too long for a lock; retrying");
                tokio::time::sleep(lock_backoff(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// The pause before lock retry `attempt`: [`FIRST_LOCK_BACKOFF`] doubling to
/// [`MAX_LOCK_BACKOFF`], with equal jitter ([`equal_jitter`], as the Stripe client's retries).
fn lock_backoff(attempt: u32) -> Duration {
    equal_jitter(attempt, FIRST_LOCK_BACKOFF, MAX_LOCK_BACKOFF)
}

/// Writes in flight: each a task with its own transaction, through `stripe_sync`'s functions,
/// so each keeps the webhook's guarantees (customer locked before user, the ordering rule,
/// all or nothing, retried on deadlock). They overlap the paging: the next page is read while
/// the last one's writes run.
struct Writes {
    tasks: JoinSet<Written>,
    /// What each task in flight writes, by its task id: a task that panics returns nothing,
    /// and its customer must still be named and its link guard (only its own) released.
    in_flight: HashMap<tokio::task::Id, InFlight>,
    limit: usize,
    /// A pool of one connection: each write ends before the run goes on, since a write in
    /// flight would hold the connection the next read needs.
    serial: bool,
    /// Users a link is in flight for. A second link to one of them waits for the first, so
    /// that a user's customers are linked in the order Stripe listed them, as one at a time
    /// did (the last linked is the user's `stripe_customer_id` while none has a subscription).
    linking: HashSet<i64>,
    hooks: hooks::WriteHooks,
}

/// A write in flight, as a panic report names it.
enum InFlight {
    /// Its users' guards are in `linking` until the task ends.
    Links(Arc<[PendingLink]>),
    Apply(Arc<[Snapshot]>),
}

/// A link to make: in a page being gathered, or in flight.
struct PendingLink {
    customer: Box<str>,
    user: i64,
    via: Via,
}

/// Links a page holds at most: the customers of one page of Stripe's list.
const LINKS_A_PAGE: usize = 100;

/// What a write waiting for a slot should do.
#[derive(Debug, PartialEq, Eq)]
enum Slot {
    Free,
    /// Wait for a write in flight to end.
    Wait,
    /// Nothing in flight could ever free it: a guard was left behind.
    Stuck,
}

impl Writes {
    /// `limit` 0: one at a time, each ended before the run goes on.
    fn new(limit: usize) -> Self {
        Self {
            tasks: JoinSet::new(),
            in_flight: HashMap::new(),
            limit: limit.max(1),
            serial: limit == 0,
            linking: HashSet::new(),
            hooks: hooks::WriteHooks::from_env(),
        }
    }

    /// Whether a write (links to `users`, or none) may start now.
    fn slot(&self, users: &[i64]) -> Slot {
        let guarded = users.iter().any(|user| self.linking.contains(user));
        if !guarded && self.tasks.len() < self.limit {
            Slot::Free
        } else if self.tasks.is_empty() {
            // Waiting would return at once, forever: a guard outlived its task.
            Slot::Stuck
        } else {
            Slot::Wait
        }
    }

    /// Starts `write` as a task, remembered as `in_flight`.
    fn spawn<F>(&mut self, in_flight: InFlight, write: F)
    where
        F: std::future::Future<Output = Written> + Send + 'static,
    {
        if let InFlight::Links(links) = &in_flight {
            self.linking.extend(links.iter().map(|link| link.user));
        }
        // The run's span goes with the task: its logs (and a panic's) say which run.
        let handle = self.tasks.spawn(write.instrument(tracing::Span::current()));
        self.in_flight.insert(handle.id(), in_flight);
    }

    /// The task `id` ended: forgets it and releases its link guard.
    fn ended(&mut self, id: tokio::task::Id) -> Option<InFlight> {
        let ended = self.in_flight.remove(&id)?;
        if let InFlight::Links(links) = &ended {
            for link in links.iter() {
                self.linking.remove(&link.user);
            }
        }
        Some(ended)
    }
}

impl InFlight {
    /// The (first) customer it writes.
    fn customer(&self) -> &str {
        match self {
            InFlight::Links(links) => links.first().map_or("?", |l| &*l.customer),
            InFlight::Apply(page) => page.first().map_or("?", |s| s.customer.as_str()),
        }
    }

    /// How many links or subscriptions it writes.
    fn len(&self) -> usize {
        match self {
            InFlight::Links(links) => links.len(),
            InFlight::Apply(page) => page.len(),
        }
    }

    /// What the write was doing, for the note that names it.
    fn describe(&self) -> String {
        match self {
            InFlight::Links(links) => match &links[..] {
                [one] => format!("linking to user {}", one.user),
                links => format!("a page of {} links", links.len()),
            },
            InFlight::Apply(page) => match &page[..] {
                [one] => format!("subscription {}", one.subscription),
                page => format!("a page of {} subscriptions", page.len()),
            },
        }
    }
}

/// Fault injection for the tests, in debug builds only (as `stripe_sync`'s
/// `pause_after_record`): `STRIPE_SYNC_WRITE_HOOKS=delay:cus_a:300,panic:sub_b` makes the
/// write holding customer `cus_a`'s link (or a subscription, named by its id) start 300 ms
/// late, and the task writing `sub_b` panic before it writes; `meet:sub_c+sub_d+sub_e:20000`
/// makes each write holding `sub_c`, `sub_d` or `sub_e` wait, before it starts, until all
/// three are in flight together, and panic if that takes 20 s (a run that writes one at a
/// time never gets there; the first to give up fails the others at once). A write is a page
/// (of links or subscriptions) or, once its page failed, one row of it: the hooks of every
/// row it holds run before it. The orders, failures and overlaps a test must provoke or prove
/// to be able to fail, without timing. Hooks run in the order given, meetings last. Read
/// once a run. Not `cfg(test)`: the tests run the `billing` binary; not a cargo feature:
/// `cargo build` after `cargo test` would rebuild the crate. A release build has no hooks and
/// ignores the variable.
mod hooks {
    #[cfg(debug_assertions)]
    use std::{sync::Arc, time::Duration};

    #[cfg(debug_assertions)]
    #[derive(Clone, Default)]
    pub struct WriteHooks(Arc<Vec<(String, Hook)>>);

    #[cfg(debug_assertions)]
    enum Hook {
        Delay(Duration),
        Panic,
        /// Shared by the entries of every write it names.
        Meet(Arc<Meeting>),
    }

    /// Writes that wait for each other before they start.
    #[cfg(debug_assertions)]
    struct Meeting {
        /// How many writes it names.
        writes: usize,
        within: Duration,
        /// The writes arrived so far, and whether one gave up waiting.
        state: tokio::sync::watch::Sender<(usize, bool)>,
    }

    #[cfg(debug_assertions)]
    impl WriteHooks {
        pub fn from_env() -> Self {
            let Ok(spec) = std::env::var("STRIPE_SYNC_WRITE_HOOKS") else {
                return Self::default();
            };
            Self(Arc::new(spec.split(',').flat_map(parse).collect()))
        }

        /// Runs the hooks of a write of `targets` (a link's customer, or a page's
        /// subscriptions). A meeting hears of every one of them it names at once, after the
        /// write's other hooks: a page holding two writes of one meeting brings both.
        pub async fn before_write(&self, targets: &[String]) {
            let mut meetings: Vec<(&Arc<Meeting>, usize, &str)> = Vec::new();
            for (wanted, hook) in self.0.iter() {
                let Some(target) = targets.iter().find(|t| *t == wanted) else {
                    continue;
                };
                match hook {
                    Hook::Delay(pause) => tokio::time::sleep(*pause).await,
                    Hook::Panic => {
                        panic!("STRIPE_SYNC_WRITE_HOOKS: panicked before writing {target}")
                    }
                    Hook::Meet(meeting) => {
                        match meetings.iter_mut().find(|(m, ..)| Arc::ptr_eq(m, meeting)) {
                            Some((_, named, _)) => *named += 1,
                            None => meetings.push((meeting, 1, target)),
                        }
                    }
                }
            }
            for (meeting, named, target) in meetings {
                meeting.attend(target, named).await;
            }
        }
    }

    /// One hook of the variable, as (target, hook) entries: one per write a `meet` names,
    /// none when it is malformed.
    #[cfg(debug_assertions)]
    fn parse(hook: &str) -> Vec<(String, Hook)> {
        let mut parts = hook.trim().splitn(3, ':');
        let ms = |text: &str| text.parse().ok().map(Duration::from_millis);
        match (parts.next(), parts.next(), parts.next()) {
            (Some("delay"), Some(target), Some(pause)) => ms(pause)
                .map(|pause| vec![(target.to_owned(), Hook::Delay(pause))])
                .unwrap_or_default(),
            (Some("panic"), Some(target), None) => vec![(target.to_owned(), Hook::Panic)],
            (Some("meet"), Some(targets), Some(within)) => {
                let mut targets: Vec<&str> = targets.split('+').filter(|t| !t.is_empty()).collect();
                targets.sort_unstable();
                targets.dedup();
                let Some(within) = ms(within) else {
                    return Vec::new();
                };
                let meeting = Arc::new(Meeting {
                    writes: targets.len(),
                    within,
                    state: tokio::sync::watch::Sender::new((0, false)),
                });
                targets
                    .into_iter()
                    .map(|target| (target.to_owned(), Hook::Meet(Arc::clone(&meeting))))
                    .collect()
            }
            _ => Vec::new(),
        }
    }

    #[cfg(debug_assertions)]
    impl Meeting {
        /// `writes` of those it names arrive (a page's). Returns once every write named has arrived, unless one gave up before: then, and
        /// after waiting `within` in vain, panics.
        async fn attend(&self, target: &str, writes: usize) {
            self.state.send_modify(|(arrived, _)| *arrived += writes);
            let mut state = self.state.subscribe();
            let all_or_given_up =
                state.wait_for(|&(arrived, gave_up)| arrived >= self.writes || gave_up);
            // Timed out or not, the state says whether they met.
            let _ = tokio::time::timeout(self.within, all_or_given_up).await;
            let mut met = false;
            self.state.send_modify(|(arrived, gave_up)| {
                if *arrived < self.writes {
                    *gave_up = true;
                }
                met = !*gave_up;
            });
            if !met {
                let (arrived, _) = *self.state.borrow();
                panic!(
                    "STRIPE_SYNC_WRITE_HOOKS: {target} did not meet the {} writes it waits for \
                     in flight together within {:?} ({arrived} arrived)",
                    self.writes, self.within
                );
            }
        }
    }

    #[cfg(all(test, debug_assertions))]
    mod tests {
        use super::*;

        #[tokio::test]
        async fn a_meeting_lets_its_writes_go_on_together_or_fails_them() {
            let hooks = WriteHooks(Arc::new(parse("meet:sub_a+sub_b:10000")));
            let first = tokio::spawn({
                let hooks = hooks.clone();
                async move { hooks.before_write(&["sub_a".to_owned()]).await }
            });
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert!(!first.is_finished(), "sub_a went on alone");
            // Not named: goes on at once.
            hooks.before_write(&["sub_other".to_owned()]).await;
            hooks.before_write(&["sub_b".to_owned()]).await;
            assert!(first.await.is_ok());

            let hooks = WriteHooks(Arc::new(parse("meet:sub_a+sub_b:50")));
            let alone = tokio::spawn({
                let hooks = hooks.clone();
                async move { hooks.before_write(&["sub_a".to_owned()]).await }
            });
            assert!(alone.await.is_err_and(|e| e.is_panic()));
            // Too late: the meeting failed.
            let late = tokio::spawn(async move { hooks.before_write(&["sub_b".to_owned()]).await });
            assert!(late.await.is_err_and(|e| e.is_panic()));

            // A page holding both meets itself at once.
            let hooks = WriteHooks(Arc::new(parse("meet:sub_a+sub_b:10000")));
            let page = ["sub_a".to_owned(), "sub_x".to_owned(), "sub_b".to_owned()];
            tokio::time::timeout(Duration::from_secs(5), hooks.before_write(&page))
                .await
                .expect("a page with every write of a meeting waits for no other");

            for malformed in ["meet:sub_a+sub_b", "meet:sub_a:soon", "delay:sub_a"] {
                assert!(parse(malformed).is_empty(), "{malformed}");
            }
        }
    }

    #[cfg(not(debug_assertions))]
    #[derive(Clone, Default)]
    pub struct WriteHooks;

    #[cfg(not(debug_assertions))]
    impl WriteHooks {
        pub fn from_env() -> Self {
            Self
        }

        pub async fn before_write(&self, _targets: &[String]) {}
    }
}

struct Run<'a, N: FnMut(Note<'_>)> {
    db: &'a Db,
    link_by_email: bool,
    /// `PRO_PRICE_IDS`: each subscription's items are checked against it as it is written.
    prices: &'a ProPrices,
    tally: Tally,
    /// Users who have a customer; e-mail never links a second one to them. Kept only when
    /// linking by e-mail, the one step that reads it.
    linked_users: HashSet<i64>,
    writes: Writes,
    /// Links gathered for the next page of links (`LINKS_A_PAGE`), in Stripe's order.
    pending: Vec<PendingLink>,
    /// Rows written to `stripe_customers` and `stripe_subscriptions`.
    growth: (Growth, Growth),
    progress: Throttle,
    note: &'a mut N,
}

impl<N: FnMut(Note<'_>)> Run<'_, N> {
    async fn all(&mut self, client: &mut StripeClient) -> Result<(), SyncError> {
        // Customers we hold as live; whichever of them the list shows is struck off, and the
        // rest are asked for one by one (`mark_deleted`).
        let mut unlisted = self.known_customers().await?;
        let mut unlinked = Vec::new();
        let mut emails_at_stripe: EmailCounts = EmailCounts::default();
        let mut customers = client.list("/v1/customers", &[]);
        while let Some(page) = customers.next(client).await? {
            let mut read = Vec::with_capacity(page.data.len());
            for object in &page.data {
                let Some(customer) = Customer::from_object(object, self.link_by_email) else {
                    continue;
                };
                self.tally.customers_seen += 1;
                if let Err(err) = storable("customer", customer.id.to_string(), MAX_ID_CHARS) {
                    // Querying with it would fail the whole run (PostgreSQL refuses NUL).
                    self.tally.failed += 1;
                    let shown = customer.id.escape_debug().to_string();
                    (self.note)(Note::Customer {
                        customer: &shown,
                        detail: format!("not linked: {err}"),
                    });
                    continue;
                }
                unlisted.remove(&*customer.id);
                let mut customer = customer;
                if let Some(email) = &customer.email {
                    emails_at_stripe.add(email);
                }
                // A customer with metadata.user_id is linked by its sessions or its metadata,
                // never by e-mail: its e-mail counted, it need not be kept.
                if customer.metadata_user.is_some() {
                    customer.email = None;
                }
                read.push(customer);
            }
            drop(page);
            let ids: Vec<String> = read.iter().map(|c| c.id.to_string()).collect();
            let users = stripe_sync::users_of_customers(self.db, &ids).await?;
            for customer in read {
                match users.get(&*customer.id).copied().flatten() {
                    Some(user) => self.matched(user),
                    None => unlinked.push(customer),
                }
            }
            self.progress(false);
        }
        unlinked.shrink_to_fit();
        let mut checkouts = Checkouts::default();
        if !unlinked.is_empty() {
            let mut sessions = client.list("/v1/checkout/sessions", &[("status", "complete")]);
            while let Some(page) = sessions.next(client).await? {
                for session in &page.data {
                    checkouts.add(session);
                }
                self.progress(false);
            }
        }
        // The payer's own Checkout first, then explicit metadata, then e-mail, so that which
        // customer gets a user does not depend on the order Stripe lists them in. Each step's
        // links all end before the next step starts.
        let mut rest = Vec::new();
        for customer in unlinked {
            match checkouts.users(&customer.id).as_slice() {
                &[user] => self.link(client, &customer, user, Via::Checkout).await?,
                [] => rest.push(customer),
                users => {
                    let named: Vec<String> = users.iter().map(i64::to_string).collect();
                    self.ambiguous(
                        &customer.id,
                        format!("its Checkout Sessions name users {}", named.join(", ")),
                    );
                }
            }
        }
        drop(checkouts);
        self.drain(client).await?;
        let (by_metadata, rest): (Vec<_>, Vec<_>) =
            rest.into_iter().partition(|c| c.metadata_user.is_some());
        for customer in &by_metadata {
            self.link_by_metadata(client, customer).await?;
        }
        drop(by_metadata);
        self.drain(client).await?;
        let users_by_email = if self.link_by_email && !rest.is_empty() {
            let wanted: HashSet<&str> = rest.iter().filter_map(|c| c.email.as_deref()).collect();
            users_by_email(self.db, &wanted).await?
        } else {
            HashMap::new()
        };
        for customer in &rest {
            if !self.link_by_email {
                self.unmatched(&customer.id);
                continue;
            }
            match email_match(
                customer,
                &emails_at_stripe,
                &users_by_email,
                &self.linked_users,
            ) {
                Ok(user) => self.link(client, customer, user, Via::Email).await?,
                Err(None) => self.unmatched(&customer.id),
                Err(Some(why)) => self.ambiguous(&customer.id, why),
            }
        }
        drop((rest, users_by_email, emails_at_stripe));
        self.drain(client).await?;
        self.progress(true);
        self.mark_deleted(client, unlisted).await?;
        let subscriptions = client.list("/v1/subscriptions", &[("status", "all"), EXPAND_LIST]);
        self.apply(client, subscriptions).await
    }

    /// Every customer we hold as live (not marked deleted).
    async fn known_customers(&self) -> Result<HashSet<Box<str>>, SyncError> {
        let known: Vec<String> = stripe_customers::Entity::find()
            .select_only()
            .column(stripe_customers::Column::CustomerId)
            .filter(stripe_customers::Column::DeletedAt.is_null())
            .into_tuple()
            .all(self.db)
            .await
            .map_err(ApiError::from)?;
        Ok(known.into_iter().map(String::into_boxed_str).collect())
    }

    /// Customers we hold as live that Stripe's list did not show: deleted at Stripe (its
    /// list leaves deleted customers out; asking for one answers `deleted: true`) and then
    /// marked deleted here, as `customer.deleted` would have.
    async fn mark_deleted(
        &mut self,
        client: &mut StripeClient,
        unlisted: HashSet<Box<str>>,
    ) -> Result<(), SyncError> {
        let mut unlisted: Vec<Box<str>> = unlisted.into_iter().collect();
        // Asked in a stable order, so that two runs' logs compare.
        unlisted.sort_unstable();
        for id in unlisted.iter().filter(|id| is_customer_id(id)) {
            match client.get(&format!("/v1/customers/{id}")).await {
                Ok((object, _)) if is_deleted(&object) => self.deleted(id).await,
                Ok(_) => {}
                // Not in this mode's account, or no longer anywhere: nothing to learn.
                Err(StripeError::Api { status: 404, .. }) => (self.note)(Note::Customer {
                    customer: id,
                    detail: "Stripe has no such customer (another mode or account?); left as is"
                        .to_owned(),
                }),
                Err(err) => return Err(err.into()),
            }
            self.progress(false);
        }
        Ok(())
    }

    /// Marks the customer deleted (again, harmlessly, if it already is: the user's columns are
    /// recomputed either way); counted `deleted` only when this run is what marked it.
    async fn deleted(&mut self, id: &str) {
        match contended(|| stripe_sync::customer_deleted(self.db, id)).await {
            Ok(true) => self.tally.deleted += 1,
            // Marked before, by a webhook while the run went on, say.
            Ok(false) => {}
            Err(err) => {
                self.tally.failed += 1;
                (self.note)(Note::Customer {
                    customer: id,
                    detail: format!("deleted at Stripe; marking it deleted failed: {err}"),
                });
            }
        }
    }

    async fn one(&mut self, client: &mut StripeClient, id: &str) -> Result<(), SyncError> {
        let (object, _) = client.get(&format!("/v1/customers/{id}")).await?;
        self.tally.customers_seen += 1;
        if is_deleted(&object) {
            let (deleted, failed) = (self.tally.deleted, self.tally.failed);
            if stripe_sync::user_of_customer(self.db, id).await?.is_some()
                || stripe_customers::Entity::find_by_id(id)
                    .one(self.db)
                    .await
                    .map_err(ApiError::from)?
                    .is_some_and(|c| c.deleted_at.is_none())
            {
                self.deleted(id).await;
            }
            // Counted once: `deleted` when this run marked it, else left alone (marked
            // before, or never ours).
            if (self.tally.deleted, self.tally.failed) == (deleted, failed) {
                self.left_alone(id, "deleted at Stripe".to_owned());
            }
        } else {
            match stripe_sync::user_of_customer(self.db, id).await? {
                Some(user) => self.matched(user),
                None => self.link_one(client, id, &object).await?,
            }
        }
        self.drain(client).await?;
        self.progress(true);
        let subscriptions = client.list(
            "/v1/subscriptions",
            &[("customer", id), ("status", "all"), EXPAND_LIST],
        );
        self.apply(client, subscriptions).await
    }

    /// `--customer` for a customer no user has: by its Checkout Sessions, then its metadata.
    async fn link_one(
        &mut self,
        client: &mut StripeClient,
        id: &str,
        object: &Value,
    ) -> Result<(), SyncError> {
        let Some(customer) = Customer::from_object(object, false) else {
            self.left_alone(id, "not linked: Stripe's customer has no id".to_owned());
            return Ok(());
        };
        let mut checkouts = Checkouts::default();
        let mut sessions = client.list(
            "/v1/checkout/sessions",
            &[("customer", id), ("status", "complete")],
        );
        while let Some(page) = sessions.next(client).await? {
            for session in &page.data {
                checkouts.add(session);
            }
        }
        match checkouts.users(id).as_slice() {
            &[user] => self.link(client, &customer, user, Via::Checkout).await?,
            [] if customer.metadata_user.is_some() => {
                self.link_by_metadata(client, &customer).await?
            }
            [] => self.left_alone(
                id,
                "not linked: no completed Checkout Session names a user, and no \
                 metadata.user_id (a run without --customer can also link by e-mail, with \
                 --link-by-email)"
                    .to_owned(),
            ),
            users => {
                let named: Vec<String> = users.iter().map(i64::to_string).collect();
                self.ambiguous(
                    id,
                    format!("its Checkout Sessions name users {}", named.join(", ")),
                );
            }
        }
        Ok(())
    }

    fn matched(&mut self, user: i64) {
        self.tally.already_linked += 1;
        if self.link_by_email {
            self.linked_users.insert(user);
        }
    }

    fn unmatched(&mut self, _customer: &str) {
        self.tally.unmatched += 1;
    }

    fn left_alone(&mut self, customer: &str, detail: String) {
        self.unmatched(customer);
        (self.note)(Note::Customer { customer, detail });
    }

    fn ambiguous(&mut self, customer: &str, why: String) {
        self.tally.ambiguous += 1;
        (self.note)(Note::Customer {
            customer,
            detail: format!("not linked: {why}"),
        });
    }

    async fn link_by_metadata(
        &mut self,
        client: &mut StripeClient,
        customer: &Customer,
    ) -> Result<(), SyncError> {
        let raw = customer.metadata_user.as_deref().unwrap_or_default();
        match raw.parse::<i64>() {
            Ok(user) => self.link(client, customer, user, Via::Metadata).await?,
            Err(_) => self.ambiguous(
                &customer.id,
                format!("metadata.user_id {raw:?} is not a user id"),
            ),
        }
        Ok(())
    }

    /// Starts linking `customer` to `user`, once a write slot is free and no other link to
    /// that user is in flight; counted when it ends.
    async fn link(
        &mut self,
        client: &mut StripeClient,
        customer: &Customer,
        user: i64,
        via: Via,
    ) -> Result<(), SyncError> {
        // Two links to one user are never in one page: the second waits for the first.
        if self.pending.iter().any(|link| link.user == user) {
            self.start_links(client).await?;
        }
        self.pending.push(PendingLink {
            customer: customer.id.clone(),
            user,
            via,
        });
        if self.pending.len() >= LINKS_A_PAGE {
            self.start_links(client).await?;
        }
        Ok(())
    }

    /// Starts the page of links gathered so far as one write, once no link in flight is to
    /// one of its users and a write slot is free.
    async fn start_links(&mut self, client: &mut StripeClient) -> Result<(), SyncError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let users: Vec<i64> = self.pending.iter().map(|link| link.user).collect();
        loop {
            match self.writes.slot(&users) {
                Slot::Free => break,
                Slot::Wait => self.settle_next(client).await,
                Slot::Stuck => {
                    let user = users
                        .iter()
                        .copied()
                        .find(|user| self.writes.linking.contains(user))
                        .unwrap_or_default();
                    return Err(SyncError::LinkGuardLeft(user));
                }
            }
        }
        let links: Arc<[PendingLink]> = std::mem::take(&mut self.pending).into();
        let (db, hooks) = (self.db.clone(), self.writes.hooks.clone());
        self.writes
            .spawn(InFlight::Links(Arc::clone(&links)), async move {
                let results = link_page(db, hooks, Arc::clone(&links)).await;
                Written::Links { links, results }
            });
        if self.writes.serial {
            self.settle_all(client).await;
        }
        Ok(())
    }

    /// Counts what a link did.
    fn linked(&mut self, id: &str, user: i64, via: Via, result: Result<LinkOutcome, String>) {
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(detail) => {
                self.tally.failed += 1;
                (self.note)(Note::Customer {
                    customer: id,
                    detail,
                });
                return;
            }
        };
        match outcome {
            LinkOutcome::Linked => {
                match via {
                    Via::Checkout => self.tally.linked_by_checkout += 1,
                    Via::Metadata => self.tally.linked_by_metadata += 1,
                    Via::Email => self.tally.linked_by_email += 1,
                }
                if self.link_by_email {
                    self.linked_users.insert(user);
                }
            }
            // Linked by a webhook since the customer was read.
            LinkOutcome::AlreadyLinked => self.matched(user),
            LinkOutcome::UnknownUser => {
                self.left_alone(id, format!("not linked: no user has id {user}"))
            }
            // Its subscriptions still belong to whoever has it now: `apply` reads the owner
            // from the database.
            LinkOutcome::LinkedToAnotherUser => {
                self.ambiguous(id, format!("linked to another user than {user} meanwhile"))
            }
            // A webhook said so since the customer was read.
            LinkOutcome::CustomerDeleted => {
                self.left_alone(id, "not linked: deleted at Stripe".to_owned())
            }
        }
    }

    /// Waits for one write to end and counts it.
    async fn settle_next(&mut self, client: &mut StripeClient) {
        if let Some(joined) = self.writes.tasks.join_next_with_id().await {
            self.settle(client, joined).await;
        }
    }

    /// Counts the writes that have ended, without waiting.
    async fn settle_ended(&mut self, client: &mut StripeClient) {
        while let Some(joined) = self.writes.tasks.try_join_next_with_id() {
            self.settle(client, joined).await;
        }
    }

    /// Starts the links gathered, then waits for every write in flight and counts it.
    async fn drain(&mut self, client: &mut StripeClient) -> Result<(), SyncError> {
        let started = self.start_links(client).await;
        self.settle_all(client).await;
        started
    }

    /// Waits for every write in flight and counts it.
    async fn settle_all(&mut self, client: &mut StripeClient) {
        while !self.writes.tasks.is_empty() {
            self.settle_next(client).await;
        }
    }

    async fn settle(
        &mut self,
        client: &mut StripeClient,
        joined: Result<(tokio::task::Id, Written), tokio::task::JoinError>,
    ) {
        let id = match &joined {
            Ok((id, _)) => *id,
            Err(err) => err.id(),
        };
        // Releases the task's own link guard, whatever it returned.
        let ended = self.writes.ended(id);
        match joined {
            Ok((_, Written::Links { links, results })) => {
                for (link, result) in links.iter().zip(results) {
                    self.linked(&link.customer, link.user, link.via, result);
                }
                // Each link stores its customer's row, if it was not stored yet.
                self.grew(Grown::Customers, links.len()).await;
            }
            Ok((_, Written::Apply { page, attempts })) => {
                let written = attempts
                    .iter()
                    .filter(|a| matches!(a, Attempt::Updated))
                    .count();
                for (snapshot, attempt) in page.iter().zip(attempts) {
                    self.applied(client, snapshot.clone(), attempt).await;
                }
                self.grew(Grown::Subscriptions, written).await;
            }
            // A write's task panicked or was cancelled: its transaction was rolled back
            // (all or nothing), and the run names it and goes on.
            Err(err) => {
                self.tally.failed += ended.as_ref().map_or(1, |ended| ended.len() as u64);
                let (customer, what) = match &ended {
                    Some(ended) => (ended.customer(), ended.describe()),
                    // Every task is remembered when spawned; kept apart, not guessed.
                    None => ("(unknown)", "a write".to_owned()),
                };
                let why = if err.is_panic() {
                    "panicked"
                } else {
                    "was cancelled"
                };
                (self.note)(Note::Customer {
                    customer,
                    detail: format!("{what}: its task {why}; nothing of it was written"),
                });
            }
        }
    }

    /// Counts `rows` written to `table` (stored, or at most that many), and refreshes its
    /// statistics when it has grown enough ([`Growth`]).
    async fn grew(&mut self, table: Grown, rows: usize) {
        let growth = match table {
            Grown::Customers => &mut self.growth.0,
            Grown::Subscriptions => &mut self.growth.1,
        };
        if !growth.add(rows as u64) {
            return;
        }
        if let Err(err) = stripe_sync::refresh_statistics(self.db, table).await {
            tracing::warn!(error = %err, ?table, "refreshing the table's statistics failed; going on");
        }
    }

    /// Applies every subscription of `listing` whose customer has a user.
    async fn apply(
        &mut self,
        client: &mut StripeClient,
        mut listing: Listing,
    ) -> Result<(), SyncError> {
        while let Some(page) = listing.next(client).await? {
            let as_of = page.as_of;
            let mut snapshots = Vec::with_capacity(page.data.len());
            for object in &page.data {
                self.tally.subscriptions_seen += 1;
                match snapshot_from_subscription(object, self.prices) {
                    Ok(snapshot) => snapshots.push(snapshot),
                    Err(err) => {
                        self.tally.failed += 1;
                        let customer = object.get("customer").and_then(Value::as_str);
                        let id = object.get("id").and_then(Value::as_str).unwrap_or("?");
                        (self.note)(Note::Customer {
                            customer: customer.unwrap_or("?"),
                            detail: format!(
                                "subscription {} not applied: {err}",
                                id.escape_debug()
                            ),
                        });
                    }
                }
            }
            drop(page);
            // The owners as they are now (linked by this run, or by a webhook since): one
            // query a page.
            let mut customers: Vec<String> = snapshots.iter().map(|s| s.customer.clone()).collect();
            customers.sort_unstable();
            customers.dedup();
            let users = stripe_sync::users_of_customers(self.db, &customers).await?;
            let mut applicable = Vec::with_capacity(snapshots.len());
            for snapshot in snapshots {
                if users.get(&snapshot.customer).copied().flatten().is_none() {
                    if is_live(&snapshot.stripe_status) {
                        self.unlinked_payer(&snapshot);
                    } else {
                        self.tally.skipped += 1;
                    }
                    continue;
                }
                match date_stretch(client, snapshot).await {
                    Ok(snapshot) => applicable.push(snapshot),
                    Err(err) => {
                        // The page's subscriptions read before the error are written, as
                        // they were when each was a write of its own.
                        if !applicable.is_empty() {
                            self.start_apply(client, applicable, as_of).await;
                        }
                        return Err(err.into());
                    }
                }
            }
            if !applicable.is_empty() {
                self.start_apply(client, applicable, as_of).await;
            }
            self.settle_ended(client).await;
            self.progress(false);
        }
        self.drain(client).await?;
        self.progress(true);
        Ok(())
    }

    /// Starts applying a page of fetched subscriptions (or one) once a write slot is free;
    /// each counted when the page ends. Two pages with subscriptions of one customer or user
    /// may be in flight together: each locks its customers, then its subscriptions, then its
    /// users, each in the order of their ids, which a webhook's order (customer, subscription,
    /// user) never crosses.
    async fn start_apply(&mut self, client: &mut StripeClient, page: Vec<Snapshot>, as_of: i64) {
        // A subscription waits for a slot only: no guard, so never `Slot::Stuck` while
        // something is in flight, and a free slot when nothing is.
        while self.writes.slot(&[]) == Slot::Wait {
            self.settle_next(client).await;
        }
        let (db, hooks) = (self.db.clone(), self.writes.hooks.clone());
        let page: Arc<[Snapshot]> = page.into();
        self.writes
            .spawn(InFlight::Apply(Arc::clone(&page)), async move {
                let attempts = apply_page(db, hooks, Arc::clone(&page), as_of).await;
                Written::Apply { page, attempts }
            });
        if self.writes.serial {
            self.settle_all(client).await;
        }
    }

    /// A live subscription whose customer no user has: a payer without Pro.
    fn unlinked_payer(&mut self, snapshot: &Snapshot) {
        self.tally.failed += 1;
        if !self.tally.unlinked_payers.contains(&snapshot.customer) {
            self.tally.unlinked_payers.push(snapshot.customer.clone());
        }
        (self.note)(Note::Customer {
            customer: &snapshot.customer,
            detail: format!(
                "subscription {} is {} but no user is linked to the customer",
                snapshot.subscription, snapshot.stripe_status
            ),
        });
    }

    /// Counts one applied subscription. A stored state that differs and is dated later is
    /// read again from Stripe once (a webhook newer than the page, say, which the new read
    /// then shows too) and applied again, here, before the run goes on; if it still differs,
    /// the run counts a failure.
    async fn applied(&mut self, client: &mut StripeClient, snapshot: Snapshot, first: Attempt) {
        let mut snapshot = snapshot;
        let mut attempt_now = first;
        let mut read_again = true;
        loop {
            let failure = match attempt_now {
                Attempt::Updated => {
                    self.tally.updated += 1;
                    return;
                }
                Attempt::Unchanged => {
                    self.tally.unchanged += 1;
                    return;
                }
                Attempt::Skipped => {
                    self.tally.skipped += 1;
                    return;
                }
                Attempt::Differs(_) if read_again => {
                    read_again = false;
                    let path = format!("/v1/subscriptions/{}", snapshot.subscription);
                    match client
                        .get_with(&path, &[EXPAND_ONE])
                        .await
                        .map_err(SyncError::from)
                        .and_then(|(object, at)| {
                            let again =
                                snapshot_from_subscription(&object, self.prices).map_err(|e| {
                                    StripeError::Malformed {
                                        path: path.clone(),
                                        detail: e.to_string(),
                                    }
                                })?;
                            Ok((again, at))
                        }) {
                        Ok((again, at)) => {
                            let again = match date_stretch(client, again).await {
                                Ok(again) => again,
                                Err(err) => {
                                    self.tally.failed += 1;
                                    (self.note)(Note::Customer {
                                        customer: &snapshot.customer,
                                        detail: format!(
                                            "subscription {}: reading its invoices failed: {err}",
                                            snapshot.subscription
                                        ),
                                    });
                                    return;
                                }
                            };
                            snapshot = again;
                            attempt_now = attempt(self.db, &snapshot, at).await;
                            continue;
                        }
                        Err(err) => format!("read again, failed: {err}"),
                    }
                }
                Attempt::Differs(stored) => format!(
                    "stored state ({stored}) differs from Stripe's ({}) and is dated \
                     after Stripe's read: a webhook newer than the read, or a state \
                     dated by a host clock that ran ahead; see docs/stripe.md",
                    describe(
                        snapshot.status.as_str(),
                        snapshot.current_period_end.map(|t| t.timestamp())
                    )
                ),
                Attempt::Failed(failure) => failure,
            };
            self.tally.failed += 1;
            (self.note)(Note::Customer {
                customer: &snapshot.customer,
                detail: format!("subscription {}: {failure}", snapshot.subscription),
            });
            return;
        }
    }

    fn progress(&mut self, always: bool) {
        if self.progress.due(always) {
            (self.note)(Note::Progress(&self.tally));
        }
    }
}

/// A `past_due` snapshot with its stretch dated by the subscription's invoices: the first
/// failed charge of its current run of unpaid invoices ([`UnpaidRun`]), when that is earlier
/// than what the snapshot carries (its expanded latest invoice). With dunning set to leave
/// subscriptions past due, a stretch whose events were lost and that a later renewal showed
/// first began invoices before the latest one. One `GET /v1/invoices?subscription=…` (newest
/// first, 100 a page; the run usually ends on the first page) per past-due subscription;
/// every other snapshot is returned as it is.
async fn date_stretch(
    client: &mut StripeClient,
    mut snapshot: Snapshot,
) -> Result<Snapshot, StripeError> {
    if snapshot.status != SubscriptionStatus::PastDue {
        return Ok(snapshot);
    }
    let mut run = UnpaidRun::default();
    let mut invoices = client.list(
        "/v1/invoices",
        &[("subscription", snapshot.subscription.as_str())],
    );
    'pages: while let Some(page) = invoices.next(client).await? {
        for invoice in &page.data {
            if !run.take(invoice) {
                break 'pages;
            }
        }
    }
    if let Some(since) = run.since {
        let earliest = snapshot
            .unpaid_invoice_since
            .map_or(since, |known| known.min(since));
        snapshot.unpaid_invoice_since = Some(earliest);
    }
    Ok(snapshot)
}

/// The stored state of the snapshot's subscription when it is not the snapshot's (shown for a
/// note), or `None` when they agree.
async fn stored_differs(db: &Db, snapshot: &Snapshot) -> Result<Option<String>, ApiError> {
    let stored = stripe_subscriptions::Entity::find_by_id(snapshot.subscription.as_str())
        .one(db)
        .await?;
    Ok(differs(stored.as_ref(), snapshot))
}

/// `stored` when it is not the snapshot's state (shown for a note), or `None` when they agree.
fn differs(stored: Option<&stripe_subscriptions::Model>, snapshot: &Snapshot) -> Option<String> {
    let Some(stored) = stored else {
        return Some("none".to_owned());
    };
    let period_end = snapshot.current_period_end.map(stored_time);
    if stored.status == snapshot.status.as_str()
        && stored.current_period_end == period_end
        && stored.price_grants_pro == snapshot.price_grants_pro
    {
        return None;
    }
    let mut shown = describe(
        &stored.status,
        stored.current_period_end.map(|t| t.timestamp()),
    );
    if stored.price_grants_pro != snapshot.price_grants_pro {
        shown.push_str(price_note(stored.price_grants_pro));
    }
    Some(shown)
}

/// What a state says of the Pro list, when that is where two states differ.
fn price_note(grants_pro: bool) -> &'static str {
    if grants_pro {
        ", a Pro price"
    } else {
        ", not a Pro price (PRO_PRICE_IDS)"
    }
}

/// `past_due until 1796328014`.
fn describe(status: &str, period_end: Option<i64>) -> String {
    match period_end {
        Some(end) => format!("{status} until {end}"),
        None => status.to_owned(),
    }
}

/// The one user the customer's e-mail names, or why there is none: `Err(None)` when no user
/// has it, `Err(Some(reason))` when more than one candidate does. `linked_users`: users who
/// already have a customer.
fn email_match<S: std::hash::BuildHasher>(
    customer: &Customer,
    emails_at_stripe: &EmailCounts<S>,
    users_by_email: &HashMap<String, Vec<i64>>,
    linked_users: &HashSet<i64>,
) -> Result<i64, Option<String>> {
    let email = customer.email.as_deref().ok_or(None)?;
    let users = users_by_email.get(email).map_or(&[][..], Vec::as_slice);
    let customers = emails_at_stripe.get(email).max(1);
    match users {
        [] => Err(None),
        // Counted by hash: the others may have this e-mail, or, rarely, another one with the
        // same hash. Either way the customer is not linked; the note must not claim which.
        _ if customers > 1 => Err(Some(format!(
            "its e-mail may be another Stripe customer's: {} other customer(s) have it or an \
             e-mail with the same 64-bit hash (counted by hash, not told apart)",
            customers - 1
        ))),
        [user] if linked_users.contains(user) => Err(Some(format!(
            "the user with its e-mail (id {user}) already has another customer"
        ))),
        [user] => Ok(*user),
        several => Err(Some(format!("{} users have its e-mail", several.len()))),
    }
}

fn is_deleted(customer: &Value) -> bool {
    customer.get("deleted").and_then(Value::as_bool) == Some(true)
}

/// How many customers at Stripe have each e-mail, by a 64-bit hash of it: a million
/// addresses cost 32 MB, not 80. Two addresses with one hash (about one run in ten million
/// at a million customers) only count as one address shared: their customers are left
/// unlinked and named as ambiguous, never linked to the wrong user.
#[derive(Default)]
struct EmailCounts<S = std::hash::RandomState> {
    hasher: S,
    counts: HashMap<u64, u32>,
}

impl<S: std::hash::BuildHasher> EmailCounts<S> {
    fn add(&mut self, email: &str) {
        let key = std::hash::BuildHasher::hash_one(&self.hasher, email);
        *self.counts.entry(key).or_default() += 1;
    }

    fn get(&self, email: &str) -> u32 {
        let key = std::hash::BuildHasher::hash_one(&self.hasher, email);
        self.counts.get(&key).copied().unwrap_or(0)
    }
}

/// Users by lower-cased e-mail (several when rows differ only in case), for the e-mails in
/// `wanted` only; read 10,000 users at a time, so that a million users are never all held.
async fn users_by_email(
    db: &Db,
    wanted: &HashSet<&str>,
) -> Result<HashMap<String, Vec<i64>>, ApiError> {
    const CHUNK: u64 = 10_000;
    let mut by_email: HashMap<String, Vec<i64>> = HashMap::new();
    let mut after = i64::MIN;
    loop {
        let rows: Vec<(i64, String)> = users::Entity::find()
            .select_only()
            .column(users::Column::Id)
            .column(users::Column::Email)
            .filter(users::Column::Id.gt(after))
            .order_by_asc(users::Column::Id)
            .limit(CHUNK)
            .into_tuple()
            .all(db)
            .await?;
        let Some(&(last, _)) = rows.last() else {
            break;
        };
        after = last;
        for (id, email) in rows {
            let email = email.trim().to_lowercase();
            if wanted.contains(email.as_str()) {
                by_email.entry(email).or_default().push(id);
            }
        }
    }
    Ok(by_email)
}

/// Rows a run wrote to a table, and when its statistics are refreshed next
/// (`stripe_sync::refresh_statistics`): at [`Growth::FIRST`] rows, then each time the count
/// has doubled, so a million rows cost seven refreshes, each a sample of the table.
#[derive(Default)]
struct Growth {
    written: u64,
    next: u64,
}

impl Growth {
    const FIRST: u64 = 10_000;

    /// Counts `rows`; true when the statistics are due.
    fn add(&mut self, rows: u64) -> bool {
        self.written += rows;
        if self.written < self.next.max(Self::FIRST) {
            return false;
        }
        self.next = self.written * 2;
        true
    }
}

/// Progress every few seconds, not every page.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
}

impl Throttle {
    const EVERY: Duration = Duration::from_secs(2);

    fn due(&mut self, always: bool) -> bool {
        let now = Instant::now();
        let due = always || self.last.is_none_or(|last| now - last >= Self::EVERY);
        if due {
            self.last = Some(now);
        }
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn customer_ids_are_checked_before_they_reach_a_url() {
        assert!(is_customer_id("cus_QXg1o8vcGmoR32"));
        for bad in [
            "",
            "cus_",
            "sub_1",
            "cus_1/../../v1/charges",
            "cus_1?x=1",
            "cus 1",
        ] {
            assert!(!is_customer_id(bad), "{bad}");
        }
    }

    #[test]
    fn customers_are_read_with_emails_folded_beyond_ascii() {
        let customer = Customer::from_object(
            &json!({
                "id": "cus_1", "object": "customer", "email": " ÉVA@Example.COM ",
                "metadata": {"user_id": " 42 "}
            }),
            true,
        )
        .unwrap();
        assert_eq!(customer.email.as_deref(), Some("éva@example.com"));
        assert_eq!(customer.metadata_user.as_deref(), Some("42"));
        let bare =
            Customer::from_object(&json!({"id": "cus_2", "email": null, "metadata": {}}), true)
                .unwrap();
        assert_eq!((bare.email, bare.metadata_user), (None, None));
    }

    #[test]
    fn writes_in_flight_stay_within_the_pool() {
        let args = |writers| SyncArgs {
            api_key: None,
            api_base: String::new(),
            customer: None,
            max_requests_per_sec: 20,
            link_by_email: false,
            writers,
        };
        use sea_orm::DbBackend;
        assert_eq!(args(8).writers_within(10, DbBackend::Postgres), 8);
        // One connection stays free for the reads between pages.
        assert_eq!(args(32).writers_within(10, DbBackend::MySql), 9);
        assert_eq!(args(8).writers_within(2, DbBackend::Postgres), 1);
        // A pool of one: none in flight while the run reads (0: each write ends first).
        assert_eq!(args(8).writers_within(1, DbBackend::Postgres), 0);
        assert_eq!(args(8).writers_within(10, DbBackend::Sqlite), 0);
        let serial = Writes::new(0);
        assert!(serial.serial && serial.limit == 1);
        assert!(!Writes::new(1).serial);
    }

    #[test]
    fn statistics_are_refreshed_as_a_table_doubles() {
        let mut growth = Growth::default();
        let due: Vec<u64> = (1..=200)
            .filter(|_| growth.add(1_000))
            .map(|n| n * 1_000)
            .collect();
        assert_eq!(due, [10_000, 20_000, 40_000, 80_000, 160_000]);
    }

    fn links(pairs: &[(&str, i64)]) -> Arc<[PendingLink]> {
        pairs
            .iter()
            .map(|(customer, user)| PendingLink {
                customer: (*customer).into(),
                user: *user,
                via: Via::Checkout,
            })
            .collect()
    }

    #[tokio::test]
    async fn a_link_guard_without_its_task_is_an_error_not_a_wait() {
        let mut writes = Writes::new(4);
        assert_eq!(writes.slot(&[7]), Slot::Free);
        // The invariant broken: a guard with no task in flight that could release it.
        writes.linking.insert(7);
        assert_eq!(writes.slot(&[7]), Slot::Stuck);
        assert_eq!(writes.slot(&[8, 7]), Slot::Stuck);
        assert_eq!(writes.slot(&[8]), Slot::Free);
        // With a page of links in flight, waiting for it is right for a link to any of its
        // users, and its end releases every one of their guards.
        writes.linking.clear();
        let page = links(&[("cus_a", 7), ("cus_b", 9)]);
        let written = Arc::clone(&page);
        writes.spawn(InFlight::Links(page), async move {
            Written::Links {
                links: written,
                results: vec![Ok(LinkOutcome::Linked), Ok(LinkOutcome::Linked)],
            }
        });
        assert_eq!(writes.slot(&[7]), Slot::Wait);
        assert_eq!(writes.slot(&[8, 9]), Slot::Wait);
        assert_eq!(writes.slot(&[8]), Slot::Free);
        let joined = writes.tasks.join_next_with_id().await;
        let Some(Ok((id, _))) = joined else {
            panic!("the task did not end with an answer");
        };
        assert!(writes.ended(id).is_some());
        assert_eq!(writes.slot(&[7, 9]), Slot::Free);
    }

    #[tokio::test]
    async fn a_panicked_write_is_named_and_releases_only_its_own_guard() {
        async fn slow() -> Written {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            panic!("aborted by the test before")
        }
        async fn boom() -> Written {
            panic!("a write that panics")
        }
        let mut writes = Writes::new(4);
        writes.spawn(InFlight::Links(links(&[("cus_slow", 1)])), slow());
        writes.spawn(
            InFlight::Links(links(&[("cus_boom", 2), ("cus_bang", 3)])),
            boom(),
        );
        let Some(Err(err)) = writes.tasks.join_next_with_id().await else {
            panic!("the panicking task ended first");
        };
        assert!(err.is_panic());
        let ended = writes.ended(err.id()).expect("remembered");
        assert_eq!(ended.customer(), "cus_boom");
        assert_eq!(ended.describe(), "a page of 2 links");
        assert_eq!(ended.len(), 2);
        // The other link's guard is still held; the panicked page's are released.
        assert_eq!(writes.slot(&[1]), Slot::Wait);
        assert_eq!(writes.slot(&[2, 3]), Slot::Free);
        writes.tasks.abort_all();
    }

    /// A write whose task dies is reported by `isolated`, not propagated: the page's other
    /// rows can still be written one at a time.
    #[tokio::test]
    async fn an_isolated_write_that_panics_says_so() {
        let hooks = hooks::WriteHooks::default();
        let ended = isolated(&hooks, vec!["sub_x".to_owned()], async {
            if std::hint::black_box(true) {
                panic!("a write that panics");
            }
        })
        .await;
        assert_eq!(ended, Err("panicked"));
        assert_eq!(isolated(&hooks, Vec::new(), async { 5 }).await, Ok(5));
    }

    #[test]
    fn an_email_collision_is_not_called_a_shared_email() {
        /// Every e-mail hashes alike: a collision on demand.
        #[derive(Default)]
        struct Collide;
        struct Zero;
        impl std::hash::Hasher for Zero {
            fn finish(&self) -> u64 {
                0
            }
            fn write(&mut self, _: &[u8]) {}
        }
        impl std::hash::BuildHasher for Collide {
            type Hasher = Zero;
            fn build_hasher(&self) -> Zero {
                Zero
            }
        }
        let mut counts = EmailCounts::<Collide>::default();
        counts.add("ann@example.com");
        counts.add("bob@example.com");
        let ann = Customer {
            id: "cus_ann".into(),
            email: Some("ann@example.com".into()),
            metadata_user: None,
        };
        let users = HashMap::from([("ann@example.com".to_owned(), vec![1])]);
        let why = email_match(&ann, &counts, &users, &HashSet::new())
            .expect_err("not linked")
            .expect("a reason");
        assert!(!why.contains("customers have its e-mail"), "{why}");
        assert!(why.contains("same 64-bit hash"), "{why}");
        let mut unique: EmailCounts = EmailCounts::default();
        unique.add("ann@example.com");
        assert_eq!(email_match(&ann, &unique, &users, &HashSet::new()), Ok(1));
    }

    #[test]
    fn lock_retries_pause_longer_each_time_within_bounds() {
        for attempt in 1..LOCK_ATTEMPTS {
            let step = FIRST_LOCK_BACKOFF
                .saturating_mul(1 << (attempt - 1))
                .min(MAX_LOCK_BACKOFF);
            let pause = lock_backoff(attempt);
            assert!(pause >= step / 2 && pause <= step, "{attempt}: {pause:?}");
        }
    }

    #[test]
    fn checkout_sessions_name_each_user_once_per_customer() {
        let mut checkouts = Checkouts::default();
        for (customer, user) in [
            ("cus_b", "2"),
            ("cus_a", "1"),
            ("cus_b", "3"),
            ("cus_b", "2"),
            ("cus_c", "not a user id"),
        ] {
            checkouts.add(&json!({"customer": customer, "client_reference_id": user}));
        }
        checkouts.add(&json!({"customer": {"id": "cus_d"}, "client_reference_id": " 4 "}));
        checkouts.add(&json!({"customer": null, "client_reference_id": "5"}));
        assert_eq!(checkouts.users("cus_a"), vec![1]);
        assert_eq!(checkouts.users("cus_b"), vec![2, 3]);
        assert!(checkouts.users("cus_c").is_empty());
        assert_eq!(checkouts.users("cus_d"), vec![4]);
        assert!(checkouts.users("cus_e").is_empty());
    }
}
