//! Stripe's subscription lifecycle, simulated: what Stripe's objects are at every instant of a
//! random history, and which events Stripe sends for each change.
//!
//! Every rule below is Stripe's documented behaviour, not our guess; the sources are named
//! where the rule is applied. Shorthands used in the comments:
//! * [status]: the `status` field of the Subscription object in Stripe's API reference (also
//!   in `spec3.json` of github.com/stripe/openapi): "incomplete … If the first invoice is not
//!   paid within 23 hours, the subscription transitions to incomplete_expired"; "paused … only
//!   when a trial ends without a payment method … can be resumed after your customer adds their
//!   payment method"; "past_due … Once Stripe has exhausted all payment retry attempts, the
//!   subscription will become canceled or unpaid (depending on your subscriptions settings)".
//! * [period]: `current_period_end`: "End of the current period that the subscription has been
//!   invoiced for. At the end of this period, a new invoice will be created." Since API
//!   2025-03-31.basil the field lives on each subscription item.
//! * [webhooks]: docs.stripe.com/billing/subscriptions/webhooks: at renewal Stripe sends
//!   `customer.subscription.updated` with the new period and `invoice.created`, and attempts
//!   the payment about an hour later (`invoice.paid` or `invoice.payment_failed`).
//! * [retries]: docs.stripe.com/billing/revenue-recovery/smart-retries: Smart Retries default
//!   to 8 tries within 2 weeks; a custom schedule retries on chosen days; after the last try the
//!   subscription is canceled, marked unpaid, or left past due, per the account's settings.
//! * [trials]: docs.stripe.com/billing/subscriptions/trials: `trial_settings.end_behavior.
//!   missing_payment_method` is `cancel`, `pause` or `create_invoice` (then the invoice cannot
//!   be paid and the subscription goes past due).
//! * [cancel]: docs.stripe.com/billing/subscriptions/cancel: `cancel_at_period_end` keeps the
//!   subscription active until the period ends, then Stripe deletes it
//!   (`customer.subscription.deleted`); deleting a customer cancels its subscriptions at once.
//! * [checkout]: docs.stripe.com/payments/checkout/build-subscriptions: a subscription-mode
//!   Checkout Session creates a new customer unless one is passed, creates the subscription,
//!   and sends `checkout.session.completed` carrying `client_reference_id`.

use super::rng::Rng;

pub const HOUR: i64 = 3_600;
pub const DAY: i64 = 86_400;
/// [status]: an incomplete subscription expires 23 hours after it was created.
pub const INCOMPLETE_EXPIRY: i64 = 23 * HOUR;
/// [webhooks]: the renewal payment is attempted about an hour after the invoice is created.
pub const PAYMENT_DELAY: i64 = HOUR;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Incomplete,
    IncompleteExpired,
    Trialing,
    Active,
    PastDue,
    Unpaid,
    Canceled,
    Paused,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Incomplete => "incomplete",
            Status::IncompleteExpired => "incomplete_expired",
            Status::Trialing => "trialing",
            Status::Active => "active",
            Status::PastDue => "past_due",
            Status::Unpaid => "unpaid",
            Status::Canceled => "canceled",
            Status::Paused => "paused",
        }
    }

    /// Ended for good: Stripe never changes it again.
    pub fn is_final(self) -> bool {
        matches!(self, Status::Canceled | Status::IncompleteExpired)
    }
}

/// What the account's settings do after the last failed retry [retries].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterRetries {
    Cancel,
    MarkUnpaid,
    LeavePastDue,
}

/// Which shape Stripe sends objects in: the endpoint's API version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// Before 2025-03-31: `current_period_*` on the subscription, `invoice.subscription`.
    Legacy,
    /// 2025-03-31.basil and later: `current_period_*` on each item,
    /// `invoice.parent.subscription_details.subscription`.
    Basil,
}

impl Shape {
    pub fn api_version(self) -> &'static str {
        match self {
            Shape::Legacy => "2024-06-20",
            Shape::Basil => "2025-03-31.basil",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Invoice {
    pub id: String,
    pub created: i64,
    /// `draft`, `open`, `paid`, `void`.
    pub status: &'static str,
    pub period_start: i64,
    pub period_end: i64,
    pub billing_reason: &'static str,
    pub attempt_count: u32,
    pub next_payment_attempt: Option<i64>,
    pub paid_at: Option<i64>,
}

impl Invoice {
    /// When it was finalized and its payment first attempted.
    pub fn finalized_at(&self) -> i64 {
        if self.billing_reason == "subscription_create" {
            self.created
        } else {
            self.created + PAYMENT_DELAY
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sub {
    pub id: String,
    pub customer: String,
    pub created: i64,
    pub status: Status,
    pub period_start: i64,
    pub period_end: i64,
    pub interval: i64,
    pub cancel_at_period_end: bool,
    pub trial_end: Option<i64>,
    pub canceled_at: Option<i64>,
    pub ended_at: Option<i64>,
    /// `pause_collection: {behavior: "void"}`: status stays active, invoices are voided.
    pub collection_paused: bool,
    pub latest_invoice: Option<Invoice>,
    /// The truth the oracle reads: when this stretch of `past_due` began (the first failed
    /// payment that made it past due). Not a Stripe field.
    pub past_due_since: Option<i64>,
    /// Its one item's price, one of [`PRICES`].
    pub price: &'static str,
    /// The truth the oracle reads: its price grants Pro under the history's `PRO_PRICE_IDS`
    /// (always, with no list). Not a Stripe field.
    pub listed: bool,
}

/// The prices a subscription is sold at, `(price, its product)`: with [`PRO_LIST`] set, the
/// first grants Pro by its price id, the second by its product, the third not at all.
pub const PRICES: [(&str, &str); 3] = [
    ("price_pro", "prod_pro"),
    ("price_team", "prod_team"),
    ("price_basic", "prod_basic"),
];

/// `PRO_PRICE_IDS` of the histories that run with a list.
pub const PRO_LIST: &str = "price_pro,prod_team";

/// The product of a price of [`PRICES`].
pub fn product_of(price: &str) -> &'static str {
    PRICES
        .iter()
        .find(|(p, _)| *p == price)
        .map_or("prod_unknown", |(_, product)| product)
}

#[derive(Clone, Debug, PartialEq)]
pub struct Customer {
    pub id: String,
    pub email: String,
    pub created: i64,
    pub deleted: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Checkout {
    pub id: String,
    pub created: i64,
    pub customer: String,
    pub subscription: String,
    /// Our user's id, as our Checkout page sets `client_reference_id`.
    pub user: usize,
}

/// An object as it stood from `at` on.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Sub(Sub),
    Customer(Customer),
    Checkout(Checkout),
    Invoice(Invoice, String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    CustomerCreated,
    CustomerDeleted,
    SubCreated,
    SubUpdated,
    SubDeleted,
    SubPaused,
    SubResumed,
    InvoicePaid,
    InvoiceFailed,
    CheckoutCompleted,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::CustomerCreated => "customer.created",
            Kind::CustomerDeleted => "customer.deleted",
            Kind::SubCreated => "customer.subscription.created",
            Kind::SubUpdated => "customer.subscription.updated",
            Kind::SubDeleted => "customer.subscription.deleted",
            Kind::SubPaused => "customer.subscription.paused",
            Kind::SubResumed => "customer.subscription.resumed",
            Kind::InvoicePaid => "invoice.paid",
            Kind::InvoiceFailed => "invoice.payment_failed",
            Kind::CheckoutCompleted => "checkout.session.completed",
        }
    }
}

/// One event Stripe sends: its type, `created`, and the object as it stood then.
#[derive(Clone, Debug)]
pub struct Sent {
    pub id: String,
    pub kind: Kind,
    pub created: i64,
    pub object: Object,
    /// The customer it concerns (for the in-flight window of the properties).
    pub customer: String,
}

pub struct User {
    pub email: String,
}

/// A whole history: its settings, every version of every object, every event.
pub struct History {
    pub seed: u64,
    pub shape: Shape,
    pub after_retries: AfterRetries,
    pub users: Vec<User>,
    /// Which user owns each customer (the one whose Checkout created it).
    pub owner: std::collections::HashMap<String, usize>,
    /// When the user's link to each customer became known: the completion of the Checkout
    /// that created it (`checkout.session.completed`). Before that no one knows whose it is.
    pub owned_since: std::collections::HashMap<String, i64>,
    /// `(at, object)`, in time order: the object as Stripe holds it from `at` on.
    pub versions: Vec<(i64, Object)>,
    pub events: Vec<Sent>,
    pub start: i64,
    pub end: i64,
    /// Whether the service runs with `PRO_PRICE_IDS` = [`PRO_LIST`] for this history.
    pub pro_list: bool,
}

/// The retry days after the first failure of an invoice [retries].
fn retry_offsets(smart: bool) -> Vec<i64> {
    if smart {
        // 8 tries within 2 weeks: the first try and 7 retries.
        vec![DAY, 3 * DAY, 5 * DAY, 7 * DAY, 9 * DAY, 11 * DAY, 14 * DAY]
    } else {
        vec![3 * DAY, 5 * DAY, 7 * DAY]
    }
}

struct Sim<'a> {
    rng: &'a mut Rng,
    h: History,
    subs: Vec<Sub>,
    customers: Vec<Customer>,
    /// Whether each customer's card pays (index as `customers`).
    card_ok: Vec<bool>,
    has_card: Vec<bool>,
    retries: Vec<i64>,
    trial_end_behavior: &'static str,
    counter: u32,
    /// Draws the prices, apart from `rng`: the histories of earlier seeds (the regression
    /// seeds among them) keep every other draw they had.
    prices: Rng,
}

impl Sim<'_> {
    /// A new subscription's price: mostly a Pro one.
    fn price(&mut self) -> &'static str {
        match self.prices.below(10) {
            0..=4 => PRICES[0].0,
            5..=7 => PRICES[1].0,
            _ => PRICES[2].0,
        }
    }

    /// Whether `price` grants Pro under the history's list: [`PRO_LIST`] names the first
    /// price and the second's product.
    fn listed(&self, price: &str) -> bool {
        !self.h.pro_list || price != PRICES[2].0
    }

    fn next_id(&mut self, prefix: &str) -> String {
        self.counter += 1;
        format!("{prefix}_m{:x}x{}", self.h.seed, self.counter)
    }

    fn customer_index(&self, id: &str) -> usize {
        self.customers.iter().position(|c| c.id == id).unwrap_or(0)
    }

    fn emit(&mut self, kind: Kind, created: i64, object: Object, customer: &str) {
        let id = self.next_id("evt");
        self.h.events.push(Sent {
            id,
            kind,
            created,
            object,
            customer: customer.to_owned(),
        });
    }

    fn record_sub(&mut self, at: i64, i: usize, kind: Option<Kind>) {
        let sub = self.subs[i].clone();
        self.h.versions.push((at, Object::Sub(sub.clone())));
        if let Some(invoice) = &sub.latest_invoice {
            self.h
                .versions
                .push((at, Object::Invoice(invoice.clone(), sub.id.clone())));
        }
        if let Some(kind) = kind {
            let customer = sub.customer.clone();
            self.emit(kind, at, Object::Sub(sub), &customer);
        }
    }

    fn invoice_event(&mut self, i: usize, at: i64, kind: Kind) {
        let sub = &self.subs[i];
        if let Some(invoice) = sub.latest_invoice.clone() {
            let customer = sub.customer.clone();
            let sub_id = sub.id.clone();
            self.emit(kind, at, Object::Invoice(invoice, sub_id), &customer);
        }
    }

    fn new_invoice(&mut self, i: usize, at: i64, reason: &'static str) {
        let id = self.next_id("in");
        let sub = &mut self.subs[i];
        sub.latest_invoice = Some(Invoice {
            id,
            created: at,
            status: "open",
            period_start: sub.period_start,
            period_end: sub.period_end,
            billing_reason: reason,
            attempt_count: 0,
            next_payment_attempt: Some(at + PAYMENT_DELAY),
            paid_at: None,
        });
    }

    fn card_pays(&self, i: usize) -> bool {
        let c = self.customer_index(&self.subs[i].customer);
        self.has_card[c] && self.card_ok[c]
    }

    /// The next change Stripe makes on its own to subscription `i`, and when.
    fn next_automatic(&self, i: usize) -> Option<i64> {
        let sub = &self.subs[i];
        match sub.status {
            Status::Incomplete => Some(sub.created + INCOMPLETE_EXPIRY),
            Status::Trialing => sub.trial_end,
            Status::Active | Status::Unpaid => {
                let pending = sub
                    .latest_invoice
                    .as_ref()
                    .filter(|inv| inv.status == "open")
                    .and_then(|inv| inv.next_payment_attempt);
                Some(pending.map_or(sub.period_end, |p| p.min(sub.period_end)))
            }
            Status::PastDue => {
                let retry = sub
                    .latest_invoice
                    .as_ref()
                    .and_then(|inv| inv.next_payment_attempt);
                Some(retry.map_or(sub.period_end, |r| r.min(sub.period_end)))
            }
            Status::Paused | Status::Canceled | Status::IncompleteExpired => None,
        }
    }

    /// Stripe's own step for subscription `i` at `at` (the time `next_automatic` named).
    fn automatic(&mut self, i: usize, at: i64) {
        let status = self.subs[i].status;
        match status {
            Status::Incomplete => {
                // [status]: no payment within 23 hours: incomplete_expired, invoice voided.
                let sub = &mut self.subs[i];
                sub.status = Status::IncompleteExpired;
                sub.ended_at = Some(at);
                if let Some(inv) = &mut sub.latest_invoice {
                    inv.status = "void";
                    inv.next_payment_attempt = None;
                }
                self.record_sub(at, i, Some(Kind::SubUpdated));
            }
            Status::Trialing => self.trial_ends(i, at),
            _ => {
                let due_payment = self.subs[i]
                    .latest_invoice
                    .as_ref()
                    .filter(|inv| inv.status == "open")
                    .and_then(|inv| inv.next_payment_attempt)
                    .filter(|p| *p <= at);
                if due_payment.is_some() {
                    self.attempt_payment(i, at);
                } else {
                    self.period_ends(i, at);
                }
            }
        }
    }

    fn trial_ends(&mut self, i: usize, at: i64) {
        let c = self.customer_index(&self.subs[i].customer);
        if !self.has_card[c] {
            // [trials]: the end behaviour for a missing payment method.
            match self.trial_end_behavior {
                "cancel" => return self.cancel_now(i, at),
                "pause" => {
                    self.subs[i].status = Status::Paused;
                    self.subs[i].trial_end = Some(at);
                    // Sent as `customer.subscription.paused` (and `.updated`).
                    self.record_sub(at, i, Some(Kind::SubUpdated));
                    return self.record_sub(at, i, Some(Kind::SubPaused));
                }
                _ => {}
            }
        }
        // The trial's end is the first period's end: a new period starts, invoiced now.
        self.subs[i].status = Status::Active;
        self.period_ends(i, at);
    }

    /// [period], [cancel], [webhooks]: at the period's end Stripe either ends the subscription
    /// (cancel_at_period_end) or moves the period forward and invoices it; the charge follows
    /// an hour later.
    fn period_ends(&mut self, i: usize, at: i64) {
        if self.subs[i].cancel_at_period_end {
            return self.cancel_now(i, at);
        }
        let sub = &mut self.subs[i];
        sub.period_start = at;
        sub.period_end = at + sub.interval;
        let paused = sub.collection_paused;
        let unpaid = sub.status == Status::Unpaid;
        self.new_invoice(i, at, "subscription_cycle");
        if paused || unpaid {
            // pause_collection voids the invoice; an unpaid subscription's invoices stay drafts
            // and are not attempted ([status], "unpaid").
            if let Some(inv) = &mut self.subs[i].latest_invoice {
                inv.status = if paused { "void" } else { "draft" };
                inv.next_payment_attempt = None;
            }
        }
        self.record_sub(at, i, Some(Kind::SubUpdated));
    }

    fn attempt_payment(&mut self, i: usize, at: i64) {
        if self.card_pays(i) {
            return self.paid(i, at);
        }
        let retries = self.retries.clone();
        let sub = &mut self.subs[i];
        let Some(inv) = sub.latest_invoice.as_mut() else {
            return;
        };
        inv.attempt_count += 1;
        let tries_done = inv.attempt_count as usize;
        let first_try = inv.created + PAYMENT_DELAY;
        inv.next_payment_attempt = retries.get(tries_done - 1).map(|d| first_try + d);
        let exhausted = inv.next_payment_attempt.is_none();
        self.invoice_event(i, at, Kind::InvoiceFailed);
        let sub = &mut self.subs[i];
        if sub.status != Status::PastDue {
            sub.status = Status::PastDue;
            sub.past_due_since = Some(at);
            self.record_sub(at, i, Some(Kind::SubUpdated));
        } else {
            self.record_sub(at, i, None);
        }
        if exhausted {
            match self.h.after_retries {
                AfterRetries::Cancel => self.cancel_now(i, at),
                AfterRetries::MarkUnpaid => {
                    self.subs[i].status = Status::Unpaid;
                    self.subs[i].past_due_since = None;
                    self.record_sub(at, i, Some(Kind::SubUpdated));
                }
                AfterRetries::LeavePastDue => {}
            }
        }
    }

    /// The latest invoice is paid: the subscription is active again [status].
    fn paid(&mut self, i: usize, at: i64) {
        let sub = &mut self.subs[i];
        if let Some(inv) = &mut sub.latest_invoice {
            inv.status = "paid";
            inv.paid_at = Some(at);
            inv.next_payment_attempt = None;
            inv.attempt_count += 1;
        }
        self.invoice_event(i, at, Kind::InvoicePaid);
        let sub = &mut self.subs[i];
        let changed = sub.status != Status::Active;
        sub.status = Status::Active;
        sub.past_due_since = None;
        self.record_sub(at, i, changed.then_some(Kind::SubUpdated));
    }

    fn cancel_now(&mut self, i: usize, at: i64) {
        let sub = &mut self.subs[i];
        sub.status = Status::Canceled;
        sub.canceled_at = Some(at);
        sub.ended_at = Some(at);
        sub.past_due_since = None;
        if let Some(inv) = &mut sub.latest_invoice
            && inv.status == "open"
        {
            inv.next_payment_attempt = None;
        }
        self.record_sub(at, i, Some(Kind::SubDeleted));
    }

    /// Runs Stripe's own changes due up to `until`, in time order.
    fn run_until(&mut self, until: i64) {
        loop {
            let next = (0..self.subs.len())
                .filter_map(|i| self.next_automatic(i).map(|at| (at, i)))
                .filter(|(at, _)| *at <= until)
                .min();
            let Some((at, i)) = next else { return };
            self.automatic(i, at);
        }
    }

    fn new_customer(&mut self, user: usize, at: i64) -> usize {
        let id = self.next_id("cus");
        let email = self.h.users[user].email.clone();
        self.h.owner.insert(id.clone(), user);
        let customer = Customer {
            id: id.clone(),
            email,
            created: at,
            deleted: false,
        };
        self.customers.push(customer.clone());
        self.card_ok.push(self.rng.chance(0.8));
        self.has_card.push(true);
        self.h
            .versions
            .push((at, Object::Customer(customer.clone())));
        self.emit(Kind::CustomerCreated, at, Object::Customer(customer), &id);
        self.customers.len() - 1
    }

    /// [checkout]: a subscription-mode Checkout, paid (or starting a trial) at once.
    fn checkout(&mut self, user: usize, at: i64) {
        let own: Vec<usize> = (0..self.customers.len())
            .filter(|c| self.h.owner.get(&self.customers[*c].id) == Some(&user))
            .filter(|c| !self.customers[*c].deleted)
            .collect();
        let c = if own.is_empty() || self.rng.chance(0.6) {
            self.new_customer(user, at)
        } else {
            own[self.rng.below(own.len())]
        };
        let trial = self.rng.chance(0.3);
        // A trial may start without a card (`payment_method_collection: if_required`).
        self.has_card[c] = !trial || self.rng.chance(0.6);
        if !trial {
            // Checkout completes only once the first payment succeeded.
            self.card_ok[c] = true;
        }
        let customer = self.customers[c].id.clone();
        let id = self.next_id("sub");
        let price = self.price();
        let interval = if self.rng.chance(0.8) {
            30 * DAY
        } else {
            365 * DAY
        };
        let trial_days = 7 + self.rng.below(8) as i64;
        let sub = Sub {
            id: id.clone(),
            customer: customer.clone(),
            created: at,
            status: if trial {
                Status::Trialing
            } else {
                Status::Active
            },
            period_start: at,
            period_end: if trial {
                at + trial_days * DAY
            } else {
                at + interval
            },
            interval,
            cancel_at_period_end: false,
            trial_end: trial.then_some(at + trial_days * DAY),
            canceled_at: None,
            ended_at: None,
            collection_paused: false,
            latest_invoice: None,
            past_due_since: None,
            price,
            listed: self.listed(price),
        };
        self.subs.push(sub);
        let i = self.subs.len() - 1;
        self.new_invoice(i, at, "subscription_create");
        if let Some(inv) = &mut self.subs[i].latest_invoice {
            inv.status = "paid";
            inv.paid_at = Some(at);
            inv.next_payment_attempt = None;
            inv.attempt_count = u32::from(!trial);
        }
        self.record_sub(at, i, Some(Kind::SubCreated));
        if !trial {
            self.invoice_event(i, at, Kind::InvoicePaid);
        }
        let checkout = Checkout {
            id: self.next_id("cs"),
            created: at,
            customer: customer.clone(),
            subscription: id,
            user,
        };
        // The session completes after the objects it made exist.
        let done = at + 1;
        self.h.owned_since.entry(customer.clone()).or_insert(done);
        self.h
            .versions
            .push((done, Object::Checkout(checkout.clone())));
        self.emit(
            Kind::CheckoutCompleted,
            done,
            Object::Checkout(checkout),
            &customer,
        );
    }

    /// A subscription made through the API with `payment_behavior: default_incomplete` for one
    /// of the user's customers: `incomplete` until paid, expiring after 23 hours [status].
    fn incomplete_subscription(&mut self, c: usize, at: i64) {
        let customer = self.customers[c].id.clone();
        let id = self.next_id("sub");
        let price = self.price();
        self.subs.push(Sub {
            id,
            customer,
            created: at,
            status: Status::Incomplete,
            period_start: at,
            period_end: at + 30 * DAY,
            interval: 30 * DAY,
            cancel_at_period_end: false,
            trial_end: None,
            canceled_at: None,
            ended_at: None,
            collection_paused: false,
            latest_invoice: None,
            past_due_since: None,
            price,
            listed: self.listed(price),
        });
        let i = self.subs.len() - 1;
        self.new_invoice(i, at, "subscription_create");
        if let Some(inv) = &mut self.subs[i].latest_invoice {
            inv.next_payment_attempt = None;
        }
        self.record_sub(at, i, Some(Kind::SubCreated));
    }

    /// One thing a customer (or the merchant) does at `at`.
    fn act(&mut self, at: i64) {
        let user = self.rng.below(self.h.users.len());
        let live: Vec<usize> = (0..self.subs.len())
            .filter(|i| !self.subs[*i].status.is_final())
            .filter(|i| self.h.owner.get(&self.subs[*i].customer) == Some(&user))
            .collect();
        let roll = self.rng.below(100);
        if live.is_empty() || roll < 12 {
            return self.checkout(user, at);
        }
        let i = live[self.rng.below(live.len())];
        let c = self.customer_index(&self.subs[i].customer);
        let status = self.subs[i].status;
        match roll {
            12..=29 => {
                // The card starts failing (expired, insufficient funds).
                self.card_ok[c] = false;
            }
            30..=49 => {
                // The customer adds or fixes a card; an open invoice is paid with it (Stripe
                // retries it when the default payment method changes), a paused subscription
                // is resumed [status].
                self.card_ok[c] = true;
                self.has_card[c] = true;
                match status {
                    Status::PastDue | Status::Unpaid | Status::Incomplete => self.paid(i, at),
                    Status::Paused => {
                        let sub = &mut self.subs[i];
                        sub.period_start = at;
                        sub.period_end = at + sub.interval;
                        self.new_invoice(i, at, "subscription_cycle");
                        self.paid(i, at);
                        self.record_sub(at, i, Some(Kind::SubResumed));
                    }
                    _ => {}
                }
            }
            50..=61 => {
                // [cancel]: cancel at the period's end, or take that back.
                if matches!(status, Status::Active | Status::Trialing | Status::PastDue) {
                    let sub = &mut self.subs[i];
                    sub.cancel_at_period_end = !sub.cancel_at_period_end;
                    sub.canceled_at = sub.cancel_at_period_end.then_some(at);
                    self.record_sub(at, i, Some(Kind::SubUpdated));
                }
            }
            62..=69 => self.cancel_now(i, at),
            70..=76 => {
                // pause_collection: the status stays active; invoices are voided.
                if status == Status::Active {
                    let sub = &mut self.subs[i];
                    sub.collection_paused = !sub.collection_paused;
                    self.record_sub(at, i, Some(Kind::SubUpdated));
                }
            }
            77..=84 => self.incomplete_subscription(c, at),
            85..=89 => {
                // [cancel]: deleting a customer cancels its subscriptions at once.
                let id = self.customers[c].id.clone();
                let theirs: Vec<usize> = (0..self.subs.len())
                    .filter(|s| self.subs[*s].customer == id && !self.subs[*s].status.is_final())
                    .collect();
                for s in theirs {
                    self.cancel_now(s, at);
                }
                self.customers[c].deleted = true;
                let customer = self.customers[c].clone();
                self.h
                    .versions
                    .push((at, Object::Customer(customer.clone())));
                self.emit(Kind::CustomerDeleted, at, Object::Customer(customer), &id);
            }
            _ => self.checkout(user, at),
        }
    }
}

/// A random history from `seed`, from `start` to `end` (seconds since the epoch): customer
/// actions until four days before `end`, Stripe's own changes until `end`.
pub fn generate(seed: u64, start: i64, end: i64) -> History {
    let mut rng = Rng::new(seed);
    let users = (0..1 + rng.below(2))
        .map(|u| User {
            email: format!("model-{seed:x}-{u}@example.com"),
        })
        .collect();
    let shape = if rng.chance(0.5) {
        Shape::Basil
    } else {
        Shape::Legacy
    };
    let after_retries = match rng.below(3) {
        0 => AfterRetries::Cancel,
        1 => AfterRetries::MarkUnpaid,
        _ => AfterRetries::LeavePastDue,
    };
    let retries = retry_offsets(rng.chance(0.5));
    let trial_end_behavior = ["cancel", "pause", "create_invoice"][rng.below(3)];
    let mut prices = Rng::new(seed ^ 0x009A_1CE5_EED5);
    let pro_list = prices.chance(0.5);
    let mut sim = Sim {
        rng: &mut rng,
        h: History {
            seed,
            shape,
            after_retries,
            users,
            owner: Default::default(),
            owned_since: Default::default(),
            versions: Vec::new(),
            events: Vec::new(),
            start,
            end,
            pro_list,
        },
        subs: Vec::new(),
        customers: Vec::new(),
        card_ok: Vec::new(),
        has_card: Vec::new(),
        retries,
        trial_end_behavior,
        counter: 0,
        prices,
    };
    let actions_until = end - 4 * DAY;
    let mut at = start;
    sim.checkout(0, at);
    loop {
        // Customers act every few hours to every few weeks.
        at += HOUR + sim.rng.below_i64(20 * DAY);
        if at > actions_until {
            break;
        }
        sim.run_until(at);
        sim.act(at);
    }
    sim.run_until(end);
    let mut h = sim.h;
    // Stable: versions written at one instant keep their order (the last one stands).
    h.versions.sort_by_key(|(at, _)| *at);
    h.events.sort_by_key(|e| e.created);
    h
}
