//! Stripe's lifecycle as the oracle (issue 18, section 3): random seeded histories of a model
//! of Stripe's billing ([`model`]), delivered as Stripe delivers ([`deliver`]) to two API
//! instances on one database, with `stripe-sync` runs against a Stripe that serves the model's
//! state ([`fake_api`]); the documented tier rule on the model's true state ([`oracle`]) is
//! what the stored state and the tier must agree with. docs/stripe-model.md describes it.
//!
//! Knobs (docs/configuration.md): STRIPE_MODEL_CASES histories per backend (random seeds, after
//! the regression seeds of `regression_seeds.txt`); STRIPE_MODEL_SEED replays one seed only;
//! STRIPE_MODEL_BASE_SEED fixes the random draws.

mod deliver;
mod emit;
mod fake_api;
mod knowledge;
mod model;
#[cfg(test)]
mod model_checks;
mod oracle;
mod rng;

use std::fmt::Write as _;
use std::sync::Arc;

use api::Application;
use entity::Tier;
use reqwest::Method;
use sea_orm::{DatabaseConnection, EntityTrait};

use crate::helpers::{TestApp, spawn_app, test_settings};
use crate::support::{self, Backend};
use deliver::Step;
use knowledge::Knowledge;
use model::{DAY, History};

crate::on_every_backend!(stripe_model_histories);

/// Histories per backend when STRIPE_MODEL_CASES is unset.
const DEFAULT_CASES: u64 = 200;
/// Histories run at once (each its own users and its own fake Stripe, one database); fewer on
/// SQLite, which has one writer.
fn concurrent(backend: Backend) -> usize {
    match backend {
        Backend::Sqlite => 4,
        _ => 8,
    }
}

/// A growing pause before trying again.
async fn pause_before_retry(attempt: u64) {
    tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
}
/// The span of one history, ending now.
const SPAN: i64 = 150 * DAY;

async fn stripe_model_histories(backend: Backend) {
    let seeds = seeds();
    let app = Arc::new(spawn_app(backend).await);
    let second = Arc::new(Instance::start(&app.db.url, None).await);
    // The histories that run with PRO_PRICE_IDS set are served by two instances of their own,
    // on the same database.
    let listed = Arc::new([
        Instance::start(&app.db.url, Some(model::PRO_LIST)).await,
        Instance::start(&app.db.url, Some(model::PRO_LIST)).await,
    ]);
    let started = std::time::Instant::now();
    let mut failures = Vec::new();
    for chunk in seeds.chunks(concurrent(backend)) {
        let mut running = tokio::task::JoinSet::new();
        for &seed in chunk {
            let app = app.clone();
            let second = second.clone();
            let listed = listed.clone();
            running.spawn(async move {
                let servers = Servers {
                    plain: [app.address.as_str(), second.address.as_str()],
                    listed: [listed[0].address.as_str(), listed[1].address.as_str()],
                };
                (seed, run_history(seed, &app, servers).await)
            });
        }
        while let Some(done) = running.join_next().await {
            let (seed, result) = done.expect("history task");
            if let Err(why) = result {
                failures.push((seed, why));
            }
        }
    }
    println!(
        "stripe model ({backend:?}): {} histories in {:.1}s, {} failed",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        failures.len()
    );
    if !failures.is_empty() {
        let mut report = String::new();
        for (seed, why) in &failures {
            let _ = writeln!(
                report,
                "seed {seed:#018x} (replay: STRIPE_MODEL_SEED={seed:#x}): {why}"
            );
        }
        panic!(
            "{} of {} histories broke a property on {backend:?}:\n{report}",
            failures.len(),
            seeds.len()
        );
    }
}

/// The regression seeds, then STRIPE_MODEL_CASES random ones; or STRIPE_MODEL_SEED alone.
fn seeds() -> Vec<u64> {
    let parse = |s: &str| {
        let s = s.trim();
        match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        }
    };
    if let Ok(seed) = std::env::var("STRIPE_MODEL_SEED") {
        let seed =
            parse(&seed).unwrap_or_else(|| panic!("STRIPE_MODEL_SEED={seed:?} is not a number"));
        return vec![seed];
    }
    let cases = match std::env::var("STRIPE_MODEL_CASES") {
        Ok(n) => n
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("STRIPE_MODEL_CASES={n:?} is not a whole number")),
        Err(_) => DEFAULT_CASES,
    };
    let mut seeds: Vec<u64> = include_str!("regression_seeds.txt")
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .filter(|l| !l.trim().is_empty())
        .filter_map(parse)
        .collect();
    // STRIPE_MODEL_BASE_SEED fixes the random draws (CI: the same histories on every run, so a
    // red run is a regression, not a new draw hitting a known open gap; docs/stripe-model.md).
    let base = match std::env::var("STRIPE_MODEL_BASE_SEED") {
        Ok(base) => parse(&base)
            .unwrap_or_else(|| panic!("STRIPE_MODEL_BASE_SEED={base:?} is not a number")),
        Err(_) => rng::Rng::new(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        )
        .next_u64(),
    };
    let mut draw = rng::Rng::new(base);
    seeds.extend((0..cases).map(|_| draw.next_u64()));
    seeds
}

/// A second API instance on the same database (two replicas behind one endpoint).
struct Instance {
    address: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// The two instances a history is delivered to: `plain` with no `PRO_PRICE_IDS`, `listed`
/// with [`model::PRO_LIST`].
struct Servers<'a> {
    plain: [&'a str; 2],
    listed: [&'a str; 2],
}

impl Instance {
    async fn start(database_url: &str, pro_list: Option<&str>) -> Self {
        let mut settings = test_settings(database_url);
        if let Some(list) = pro_list {
            settings.stripe.pro_prices =
                api::stripe::prices::ProPrices::parse(list).expect("the model's list");
        }
        let app = Application::build(&settings)
            .await
            .expect("build the second instance");
        let address = format!("http://{}", app.local_addr().expect("addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        Self {
            address,
            stop: Some(stop),
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The stored rows of `user`'s subscriptions, for failure messages.
async fn stored(db: &DatabaseConnection, user_id: i64) -> String {
    let Ok(Some(user)) = entity::users::Entity::find_by_id(user_id).one(db).await else {
        return "no user row".to_owned();
    };
    let subs = entity::subscriptions_of(db, user_id)
        .await
        .unwrap_or_default();
    let mut out = format!(
        "user columns {} {:?} {:?} price grants pro {}; rows:",
        user.subscription_status,
        user.subscription_id,
        user.current_period_end,
        user.price_grants_pro
    );
    for s in subs {
        let _ = write!(
            out,
            " [{} {} {} end {:?} created {} price grants pro {}]",
            s.subscription_id,
            s.customer_id,
            s.status,
            s.current_period_end.map(|e| e.timestamp()),
            s.created,
            s.price_grants_pro
        );
    }
    out
}

/// An object in a trace line.
fn describe(h: &History, object: &model::Object) -> String {
    match object {
        model::Object::Sub(s) => format!(
            "[{} of {} {} {}{} ends {}{}{}]",
            s.id,
            s.customer,
            s.price,
            if s.listed { "" } else { " (not Pro)" },
            s.status.as_str(),
            day(h, s.period_end),
            if s.cancel_at_period_end {
                " cancel_at_period_end"
            } else {
                ""
            },
            s.past_due_since
                .map(|p| format!(" past due since {}", day(h, p)))
                .unwrap_or_default()
        ),
        model::Object::Customer(c) => {
            format!("[{}{}]", c.id, if c.deleted { " deleted" } else { "" })
        }
        model::Object::Checkout(c) => format!(
            "[{} {} {} user {}]",
            c.id, c.customer, c.subscription, c.user
        ),
        model::Object::Invoice(i, s) => format!("[{} of {s} {}]", i.id, i.status),
    }
}

pub fn day(h: &History, t: i64) -> String {
    format!("day {:.2}", (t - h.start) as f64 / DAY as f64)
}

/// The two instant properties at `t`, for every user.
async fn check_instant(
    known: &Knowledge<'_>,
    db: &DatabaseConnection,
    users: &[(i64, String)],
    t: i64,
) -> Result<(), String> {
    let at = chrono::DateTime::from_timestamp(t, 0).expect("instant");
    for (u, (user_id, _)) in users.iter().enumerate() {
        let row = entity::users::Entity::find_by_id(*user_id)
            .one(db)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("user row gone")?;
        let stored_pro = row.tier_at(db, at).await.map_err(|e| e.to_string())? == Tier::Pro;
        if let Err(why) = known.judge(u, t, stored_pro) {
            return Err(format!("{why}; {}", stored(db, *user_id).await));
        }
    }
    Ok(())
}

async fn run_history(seed: u64, app: &TestApp, servers: Servers<'_>) -> Result<(), String> {
    let now = chrono::Utc::now().timestamp();
    let h = Arc::new(model::generate(seed, now - SPAN, now));
    let mut users = Vec::new();
    let mut tokens = Vec::new();
    for user in &h.users {
        let email = api::domain::Email::parse(&user.email).expect("model e-mail");
        // SQLite has one writer, and a sync may hold it: a busy database is retried.
        let mut attempt = 0;
        let (model, token) = loop {
            match api::service::accounts::create_user(&app.db.db, &email).await {
                Ok(created) => break created,
                Err(err) if attempt < 20 => {
                    attempt += 1;
                    tracing::debug!(error = %err, "create user: retrying");
                    pause_before_retry(attempt).await;
                }
                Err(err) => return Err(format!("HARNESS: create user: {err:?}")),
            }
        };
        users.push((model.id, user.email.clone()));
        tokens.push(token);
    }
    let stripe = fake_api::FakeApi::start(h.clone(), users.clone()).await;
    let mut rng = rng::Rng::new(seed ^ 0x5EED_DE11_7E57);
    let steps = deliver::plan(&h, &mut rng);
    let (addresses, pro_list) = if h.pro_list {
        (servers.listed, Some(model::PRO_LIST))
    } else {
        (servers.plain, None)
    };
    // Every step and its answer, for replaying a seed (docs/stripe-model.md).
    let trace = std::env::var_os("STRIPE_MODEL_TRACE").is_some();
    let mut known = Knowledge::new(&h);
    let context = |what: String| {
        format!(
            "{what} [{:?} shape, after retries: {:?}, PRO_PRICE_IDS {:?}, {} users, {} events]",
            h.shape,
            h.after_retries,
            pro_list.unwrap_or(""),
            h.users.len(),
            h.events.len()
        )
    };
    let mut next = 0;
    while next < steps.len() {
        let (at, step) = &steps[next];
        next += 1;
        match step {
            Step::Deliver {
                event,
                instance,
                with_next,
            } => {
                let send = |event: usize, instance: usize| {
                    let body = emit::event(&h.events[event], h.shape, &users);
                    let address = addresses[instance];
                    async move {
                        let answer = deliver::deliver(&app.client, address, &body).await;
                        (event, instance, answer)
                    }
                };
                let mut sent_now = vec![];
                let this = send(*event, *instance);
                match steps.get(next) {
                    Some((
                        _,
                        Step::Deliver {
                            event, instance, ..
                        },
                    )) if *with_next => {
                        next += 1;
                        let (a, b) = tokio::join!(this, send(*event, *instance));
                        sent_now.extend([a, b]);
                    }
                    _ => sent_now.push(this.await),
                }
                for (event, instance, (status, answer)) in sent_now {
                    let sent = &h.events[event];
                    if trace {
                        println!(
                            "{seed:#x} {} deliver {} {} {} (created {}) to #{instance}: {}",
                            day(&h, *at),
                            sent.kind.as_str(),
                            sent.id,
                            describe(&h, &sent.object),
                            day(&h, sent.created),
                            answer["outcome"]
                        );
                    }
                    if status != 200 {
                        return Err(context(format!(
                            "ACKNOWLEDGED: {} {} answered {status} {answer}",
                            sent.kind.as_str(),
                            sent.id
                        )));
                    }
                    known.delivered.insert(event);
                    known.saw(&sent.object, sent.created);
                }
            }
            Step::Sync { skew } => {
                let at = (*at).min(now);
                stripe.set_now(at);
                let run =
                    deliver::stripe_sync(&app.db.url, &stripe.base, at + skew, pro_list).await;
                if trace {
                    println!(
                        "{seed:#x} {} sync, skew {skew}s: {}",
                        day(&h, at),
                        run.output
                    );
                }
                known.last_sync = Some(at);
                for sub in h.truth_at(at).subs.values() {
                    known.saw(&model::Object::Sub((*sub).clone()), at);
                }
            }
        }
        if *at <= now {
            check_instant(&known, &app.db.db, &users, *at)
                .await
                .map_err(context)?;
        }
    }
    // Settled: every delivery made; a sync for the lost events, from a skewed host.
    stripe.set_now(now);
    let skew = rng.below_i64(2 * deliver::MAX_SKEW + 1) - deliver::MAX_SKEW;
    let mut sync = deliver::stripe_sync(&app.db.url, &stripe.base, now + skew, pro_list).await;
    // A run that met a busy SQLite database is run again, as an operator would.
    for attempt in 1..=3 {
        let busy = sync.output.contains("database is locked") || sync.output.contains("busy");
        if sync.success || !busy {
            break;
        }
        pause_before_retry(attempt).await;
        sync = deliver::stripe_sync(&app.db.url, &stripe.base, now + skew, pro_list).await;
    }
    known.last_sync = Some(now + knowledge::SYNC_MARGIN);
    if !sync.success {
        return Err(context(format!(
            "SYNC: the final stripe-sync failed: {}",
            sync.output
        )));
    }
    check_settled(&h, app, &users, &tokens, now)
        .await
        .map_err(context)
}

/// After every delivery and a final sync: stored rows, the Rust tier and the view's tier equal
/// the oracle's.
async fn check_settled(
    h: &History,
    app: &TestApp,
    users: &[(i64, String)],
    tokens: &[String],
    now: i64,
) -> Result<(), String> {
    let truth = h.truth_at(now);
    for (u, (user_id, _)) in users.iter().enumerate() {
        let rows = entity::subscriptions_of(&app.db.db, *user_id)
            .await
            .map_err(|e| e.to_string())?;
        for sub in truth
            .subs
            .values()
            .filter(|s| h.owner.get(&s.customer) == Some(&u))
        {
            let row = rows.iter().find(|r| r.subscription_id == sub.id);
            let gone = truth.deleted_customers.contains(&sub.customer.as_str());
            let Some(row) = row else {
                if gone {
                    continue; // never heard of, and its customer is deleted: Free either way
                }
                return Err(format!(
                    "SETTLED STATE: user {u}'s subscription {} ({}) is not stored; {}",
                    sub.id,
                    sub.status.as_str(),
                    stored(&app.db.db, *user_id).await
                ));
            };
            let end = row.current_period_end.map(|e| e.timestamp());
            if !oracle::stored_statuses(sub.status).contains(&row.status.as_str())
                || end != Some(sub.period_end)
                || row.price_grants_pro != sub.listed
            {
                return Err(format!(
                    "SETTLED STATE: subscription {} is {} ending {} at Stripe (price {}, \
                     grants Pro by it: {}), stored {} ending {:?} (price grants Pro: {})",
                    sub.id,
                    sub.status.as_str(),
                    sub.period_end,
                    sub.price,
                    sub.listed,
                    row.status,
                    end,
                    row.price_grants_pro
                ));
            }
        }
        let expected = if h.pro_at(u, now) { "pro" } else { "free" };
        let (status, billing) = app.json(Method::GET, "/v1/billing", &tokens[u]).await;
        let rust = billing["tier"].as_str().unwrap_or("?").to_owned();
        let view = app
            .db
            .texts(&format!(
                "SELECT tier FROM user_tiers WHERE user_id = {user_id}"
            ))
            .await
            .join(",");
        if status != 200 || rust != expected || view != expected {
            return Err(format!(
                "SETTLED TIER: user {u}: oracle {expected}, /v1/billing {status} {rust}, \
                 view {view}; {}",
                stored(&app.db.db, *user_id).await
            ));
        }
    }
    Ok(())
}
