//! The API's PostgreSQL pool plans each statement for the values it is run with.
//!
//! A connection keeps its prepared statements for its whole life. Left to itself, PostgreSQL
//! switches a prepared statement to one generic plan after five executions when that plan
//! looks no dearer than the custom ones, and keeps it until the table is next analyzed; plans
//! made while `stripe_subscriptions` was nearly empty then scan it as it grows (measured by
//! `bench webhooks`: the pool used first served 3x fewer deliveries than a pool opened later,
//! on the same router).

use sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::helpers::test_settings;
use crate::support::{Backend, TestDb};

#[tokio::test]
async fn postgres_pool_plans_each_statement_for_its_values() {
    let db = TestDb::new(Backend::Postgres).await;
    let (pool, _) = api::startup::open_database(&test_settings(&db.url))
        .await
        .expect("open the API's pool");
    let row = pool
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SHOW plan_cache_mode",
        ))
        .await
        .expect("SHOW plan_cache_mode")
        .expect("one row");
    let mode: String = row.try_get_by_index(0).expect("a text value");
    assert_eq!(mode, "force_custom_plan");
    let _ = pool.close().await;
}
