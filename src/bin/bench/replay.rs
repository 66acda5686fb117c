//! The SQL floor of an API request: the statements the API's own code executes, recorded on
//! a connection that keeps every statement, then replayed as plain statements with other ids.
//! Recording rather than writing them by hand keeps the floor true when the API changes.

use std::sync::{Arc, Mutex};

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbErr, IsolationLevel, Statement, TransactionOptions,
    TransactionTrait, Value, Values,
};

use crate::load;

/// A connection that records every statement run through it.
pub struct Recorder {
    pub db: DatabaseConnection,
    recorded: Arc<Mutex<Vec<Statement>>>,
}

impl Recorder {
    pub async fn open(url: &str, connections: u32) -> Result<Self, String> {
        let mut db = load::connect(url, connections).await?;
        let recorded: Arc<Mutex<Vec<Statement>>> = Arc::default();
        let sink = recorded.clone();
        db.set_metric_callback(move |info| {
            if let Ok(mut all) = sink.lock() {
                all.push(info.statement.clone());
            }
        });
        Ok(Self { db, recorded })
    }

    /// What was recorded since the last call.
    pub fn take(&self) -> Vec<Statement> {
        self.recorded
            .lock()
            .map(|mut all| std::mem::take(&mut *all))
            .unwrap_or_default()
    }
}

/// `template` with every bound value equal to a swap's first replaced by its second.
pub fn substitute(template: &[Statement], swaps: &[(Value, Value)]) -> Vec<Statement> {
    let swap = |v: &Value| {
        swaps
            .iter()
            .find(|(from, _)| from == v)
            .map_or_else(|| v.clone(), |(_, to)| to.clone())
    };
    template
        .iter()
        .map(|s| Statement {
            sql: s.sql.clone(),
            values: s
                .values
                .as_ref()
                .map(|v| Values(v.0.iter().map(swap).collect())),
            db_backend: s.db_backend,
        })
        .collect()
}

/// How a request's statements are grouped: the first `outside` run on their own (like an
/// authentication lookup), the rest in one transaction when `transaction` says so.
#[derive(Clone, Copy)]
pub struct Shape {
    pub outside: usize,
    pub transaction: Option<Option<IsolationLevel>>,
}

/// Runs `statements` as `shape` groups them, through the same driver the API uses.
pub async fn replay(
    db: &DatabaseConnection,
    statements: &[Statement],
    shape: Shape,
) -> Result<(), DbErr> {
    let (outside, inside) = statements.split_at(shape.outside.min(statements.len()));
    for s in outside {
        db.execute_raw(s.clone()).await?;
    }
    let Some(isolation_level) = shape.transaction else {
        for s in inside {
            db.execute_raw(s.clone()).await?;
        }
        return Ok(());
    };
    let txn = db
        .begin_with_options(TransactionOptions {
            isolation_level,
            ..Default::default()
        })
        .await?;
    for s in inside {
        txn.execute_raw(s.clone()).await?;
    }
    txn.commit().await
}

/// The first line of each statement, for the report.
pub fn describe(statements: &[Statement]) {
    for s in statements {
        let sql: String = s.sql.chars().take(120).collect();
        println!("    {sql}");
    }
}
