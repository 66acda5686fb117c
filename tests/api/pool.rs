//! The API's PostgreSQL pool plans each statement for the values it is run with.
//!
//! A connection keeps its prepared statements for its whole life. Left to itself, PostgreSQL
//! switches a prepared statement to one generic plan after five executions when that plan
//! looks no dearer than the custom ones, and keeps it until the table is next analyzed; plans
//! made while `stripe_subscriptions` was nearly empty then scan it as it grows (measured by
//! `bench webhooks`: the pool used first served 3x fewer deliveries than a pool opened later,
//! on the same router).

use sea_orm::{ConnectionTrait, DbBackend, Statement};

use api::db::Pooler;

use crate::helpers::test_settings;
use crate::support::{Backend, TestDb};

#[tokio::test]
async fn postgres_pool_plans_each_statement_for_its_values() {
    let db = TestDb::new(Backend::Postgres).await;
    let settings = test_settings(&db.url);
    let (pool, _) = api::startup::open_database(&settings)
        .await
        .expect("open the API's pool");
    if settings.db_pooler == Pooler::Transaction {
        // Behind a transaction-mode pooler no statement outlives its transaction (the cache is
        // off, and the pooler deallocates when the transaction ends), so none is run often
        // enough for a generic plan: each transaction sees only the statement it prepared.
        for _ in 0..10 {
            let prepared =
                first_text(&pool, "SELECT count(*)::text FROM pg_prepared_statements").await;
            assert_eq!(prepared, "1", "statements left on the server connection");
        }
    } else {
        assert_eq!(
            first_text(&pool, "SHOW plan_cache_mode").await,
            "force_custom_plan"
        );
    }
    let _ = pool.close().await;
}

async fn first_text(db: &impl ConnectionTrait, sql: &str) -> String {
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .expect("one row");
    row.try_get_by_index(0).expect("a text value")
}
